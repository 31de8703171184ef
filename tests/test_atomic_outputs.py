"""Atomic outputs: a run killed at any rename leaves at most a temporary file of its own, and the
next run removes it (rbench.store.cache.remove_stale_tmp): after `kill -9` at the rename of the
record, or of any cache entry, and a rerun, no `*.tmp` is left anywhere. A run that fails its
checks creates no folder (rbench.core.config.check_writable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_script

from rbench.core.config import check_writable
from rbench.core.errors import RbenchError
from rbench.store import cache as cache_mod
from rbench.store.cache import atomic_write_text, remove_stale_tmp

# the real CLI in a child whose os.replace SIGKILLs the process at the first rename onto a path
# containing $KILL_AT: the temporary file is complete, the rename never happens
KILLER = """
import os, signal
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.environ.get("KILL_AT") and os.environ["KILL_AT"] in os.fspath(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
"""
SCRIPT = KILLER + tiny_cli_script("digits-atomic", compress_epochs=0.2, batch_size=40)


def run(tmp_path: Path, checkpoint: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": kill_at or ""}
    command = [
        sys.executable, str(script), "run", "-m", "magnitude", "-r", "4", "-s", "digits-atomic",
        "--device", "cpu", "-q", "--dense-checkpoint", str(checkpoint),
        "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def leftovers(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.slow
def test_kill_at_the_record_rename_then_rerun_leaves_no_tmp(tmp_path, dense_checkpoint):
    killed = run(tmp_path, dense_checkpoint, kill_at=f"{os.sep}results{os.sep}")
    assert killed.returncode == -9, killed.stderr
    assert not list((tmp_path / "results").rglob("*.json"))  # no record, not even half of one
    (hidden,) = leftovers(tmp_path / "results")  # the complete record's temporary file
    assert hidden.name.startswith(".") and json.loads(hidden.read_text())["schema"]
    done = run(tmp_path, dense_checkpoint, kill_at=None)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "results").rglob("*.json"))) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_kill_at_every_stage_then_rerun_leaves_no_tmp(tmp_path, dense_checkpoint):
    """A kill at the first rename into each stage's cache folder, then at the record's, each
    followed by the same command: the last run finishes and nothing temporary remains."""
    for stage in ("dense", "compress", "evaluate", "results"):
        killed = run(tmp_path, dense_checkpoint, kill_at=f"{os.sep}{stage}{os.sep}")
        assert killed.returncode == -9, (stage, killed.stderr)
        assert leftovers(tmp_path), stage
    done = run(tmp_path, dense_checkpoint, kill_at=None)
    assert done.returncode == 0, done.stderr
    assert leftovers(tmp_path) == []


def test_stale_temporary_files_of_dead_writers_go_and_live_ones_stay(tmp_path, monkeypatch):
    host = cache_mod._HOST
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    files = {
        "dead": tmp_path / f".r.json.{host}-{dead}.abc.tmp",
        "live": tmp_path / f".r.json.{host}-{os.getppid()}.abc.tmp",
        "other host": tmp_path / f".r.json.elsewhere-{dead}.abc.tmp",
        "untagged": tmp_path / ".r.json.k3j4.tmp",
        "not hidden": tmp_path / "r.json.tmp",
    }
    for path in files.values():
        path.write_text("{}")
    assert set(remove_stale_tmp(tmp_path)) == {files["dead"]}
    monkeypatch.setattr(cache_mod, "STALE_AFTER_S", -1.0)  # everything hidden is now old
    assert set(remove_stale_tmp(tmp_path)) == {
        files["live"],
        files["other host"],
        files["untagged"],
    }
    assert files["not hidden"].exists()
    atomic_write_text(tmp_path / "r.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.tmp"]


def test_check_writable_leaves_no_folder(tmp_path):
    target = tmp_path / "a" / "b" / "results"
    check_writable(target)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(RbenchError, match="cannot write to"):
        check_writable(tmp_path / "file" / "sub")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
