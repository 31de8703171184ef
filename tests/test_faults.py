"""Faults: a run SIGKILLed at several points and restarted finishes with the same record as an
uninterrupted run; two runs sharing a cache at the same time neither corrupt nor duplicate it;
the same command and seed give byte-identical metrics."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_run, tiny_cli_script

pytestmark = pytest.mark.slow

# A tiny suite registered the way a plugin would, then the real CLI.
SCRIPT = tiny_cli_script("digits-tiny", compress_epochs=2, batch_size=10)


def command(tmp_path, sub, cache="cache"):
    script = tmp_path / "run_tiny.py"
    script.write_text(SCRIPT)
    return [
        sys.executable,
        str(script),
        "run",
        "-m",
        "magnitude",
        "-r",
        "8",
        "-s",
        "digits-tiny",
        "--results-dir",
        str(tmp_path / sub),
        "--cache-dir",
        str(tmp_path / cache),
    ]


def record_of(tmp_path, sub) -> dict:
    (path,) = list((tmp_path / sub).rglob("*.json"))
    return json.loads(path.read_text())


def kill_when(cmd, ready, timeout=300):
    """Start cmd, SIGKILL it as soon as ready() holds; return whether it was killed in time."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    start = time.time()
    while proc.poll() is None and time.time() - start < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.wait()
    return False


def entries(cache: Path, stage: str, pattern: str = "*") -> list[Path]:
    return [p for p in (cache / stage).glob(pattern) if (p / "meta.json").is_file()]


def test_sigkill_at_several_points_then_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        command(tmp_path, "ref", cache="ref-cache"), check=True, env=env, capture_output=True
    )
    reference = record_of(tmp_path, "ref")

    cache = tmp_path / "cache"
    cmd = command(tmp_path, "out")
    killed = [
        kill_when(cmd, lambda: len(entries(cache, "dense", "*-partial")) > 0),  # mid dense
        kill_when(
            cmd,
            lambda: (
                len(entries(cache, "dense")) > 0  # mid compress
                and not entries(cache, "dense", "*-partial")
            ),
        ),
        kill_when(cmd, lambda: len(entries(cache, "evaluate", "*autoattack*")) >= 1),  # mid AA
    ]
    assert any(killed)
    assert not list((tmp_path / "out").rglob("*.json"))  # no half-written record
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    resumed = record_of(tmp_path, "out")
    assert_same_run(resumed, reference)
    assert not list(cache.rglob("*.tmp"))  # no temporary files left behind


def test_concurrent_runs_share_one_cache(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            command(tmp_path, f"out{i}"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    a, b = record_of(tmp_path, "out0"), record_of(tmp_path, "out1")
    # one dense model and one compressed model, computed once and reused by the other run
    assert len(entries(tmp_path / "cache", "dense")) == 1
    assert len(entries(tmp_path / "cache", "compress")) == 1
    assert sum("reusing the cached" in err for _, err in outputs) >= 1
    # determinism: byte-identical metrics
    assert json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True)
