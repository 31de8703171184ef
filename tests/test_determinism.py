"""Determinism: the same `rbench run` command and seed, run from scratch twice in separate
processes with separate caches, gives byte-identical metrics and compressed tensors (on a CPU, at
one thread count)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_script

from rbench.store.cache import canonical_json

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = tiny_cli_script("digits-det", compress_epochs=1, batch_size=20)


@pytest.mark.slow
def test_same_command_and_seed_give_byte_identical_metrics(tmp_path):
    """Two runs from scratch (own cache, own results folder, own process) of one command."""
    script = tmp_path / "run_det.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    metrics, weights = [], []
    for sub in ("a", "b"):
        cmd = [
            sys.executable,
            str(script),
            "run",
            *("-m", "magnitude", "-r", "8", "-s", "digits-det", "--seed", "3", "-q"),
            *("--device", "cpu"),
            *("--results-dir", str(tmp_path / sub / "r"), "--cache-dir", str(tmp_path / sub / "c")),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (path,) = (tmp_path / sub / "r").rglob("*.json")
        record = json.loads(path.read_text())
        assert record["compute"]["dense_reused"] is False  # computed here, not reused
        m = record["metrics"]  # a model whose numbers could differ: attacked, not constant
        assert 0 < m["autoattack"]["correct"] < m["clean_eval_points"]["correct"]
        weights.append(record["hashes"]["compressed"])
        metrics.append(canonical_json(record["metrics"]))
    assert metrics[0] == metrics[1]
    assert weights[0] == weights[1]  # the compressed tensors are byte-identical too
    assert json.loads(metrics[0])["autoattack"]["n"] == 40
