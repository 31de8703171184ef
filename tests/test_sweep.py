"""`rbench sweep` runs a grid through submitit's local executor; a failed job does not stop the
others, and a rerun skips the finished jobs."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import registered, tiny_digits

from rbench.core.config import RunConfig
from rbench.sweep import sweep

pytestmark = pytest.mark.slow


def test_sweep_with_a_failure_and_a_resume(tmp_path):
    suite = tiny_digits("digits-sweep", dense_epochs=2, compress_epochs=0.5, n_eval=20)
    with registered(suite) as name:
        base = RunConfig(
            method="",
            ratio=1,
            suite=name,
            results_dir=str(tmp_path / "r"),
            cache_dir=str(tmp_path / "c"),
            quiet=True,
        )
        grid = (["dense", "magnitude"], [1, 4], [0, 1])  # dense at ratio 4 must fail
        first = sweep(base, *grid, executor="local", say=lambda m: None)
        assert len(first) == 8
        failed = sorted(n for n, r in first.items() if r["status"] == "failed")
        assert failed == ["dense-r4-s0", "dense-r4-s1"]
        assert "does not compress" in first["dense-r4-s0"]["error"]
        records = {n: Path(r["record"]) for n, r in first.items() if r["status"] == "done"}
        for name, path in records.items():
            assert json.loads(path.read_text())["method"]["name"] == name.split("-r")[0]
        # a job "killed" before its record was written: only it (and the failures) run again
        lost = records.pop("magnitude-r4-s1")
        lost.unlink()
        stamps = {n: p.stat().st_mtime_ns for n, p in records.items()}
        messages = []
        second = sweep(base, *grid, executor="local", say=messages.append)
        assert "5 already done, 3 to run" in messages[0]
        assert second["magnitude-r4-s1"]["status"] == "done" and lost.is_file()
        assert {n: p.stat().st_mtime_ns for n, p in records.items()} == stamps
        # on another machine (a fresh cache, no manifest) the records alone say what is done
        messages = []
        moved = replace(base, cache_dir=str(tmp_path / "elsewhere"))
        third = sweep(moved, ["magnitude"], [1, 4], [0, 1], executor="local", say=messages.append)
        assert "4 already done, 0 to run" in messages[0]
        everything = {**records, "magnitude-r4-s1": lost}
        assert set(third) == {f"magnitude-r{r}-s{s}" for r in (1, 4) for s in (0, 1)}
        assert {n: Path(r["record"]) for n, r in third.items()} == {n: everything[n] for n in third}
        assert not (tmp_path / "elsewhere" / "dense").exists()  # nothing was trained again
