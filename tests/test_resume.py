"""A run interrupted in the middle of a stage resumes and produces the same record as an
uninterrupted run of the same seed; cached stages are reused and say so."""

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import assert_same_run, registered, tiny_digits

from rbench.core.config import RunConfig
from rbench.core.suites import get_suite
from rbench.evaluate import accuracy as ev
from rbench.runner import Runner
from rbench.store.cache import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_suite():
    """digits with a 4-epoch dense recipe, a 1 AT-epoch budget and 40 evaluation points."""
    suite = tiny_digits("digits-tiny", dense_epochs=4, compress_epochs=1, n_eval=40)
    with registered(suite) as name:
        yield name


def config(tmp_path, suite, sub, method="magnitude", ratio=4):
    return RunConfig(
        method=method,
        ratio=ratio,
        suite=suite,
        results_dir=str(tmp_path / sub / "r"),
        cache_dir=str(tmp_path / sub / "c"),
        quiet=True,
    )


def test_interrupted_run_resumes_to_the_same_record(tmp_path, tiny_suite, monkeypatch):
    reference = Runner(config(tmp_path, tiny_suite, "a")).run()

    # 1) interrupt dense training while it saves its second epoch checkpoint
    saves = {"n": 0}
    original_save = Store.save

    def flaky_save(self, stage, key, meta, tensors=None):
        if key.endswith("-partial"):
            saves["n"] += 1
            if saves["n"] == 2:
                raise KeyboardInterrupt
        return original_save(self, stage, key, meta, tensors)

    monkeypatch.setattr(Store, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        Runner(config(tmp_path, tiny_suite, "b")).run()
    monkeypatch.setattr(Store, "save", original_save)
    assert not list((tmp_path / "b" / "r").rglob("*.json"))  # nothing half-written

    # 2) resume; this time interrupt the evaluation during AutoAttack
    original_aa = ev.autoattack_correct

    def interrupted_aa(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "autoattack_correct", interrupted_aa)
    with pytest.raises(KeyboardInterrupt):
        Runner(config(tmp_path, tiny_suite, "b")).run()
    monkeypatch.setattr(ev, "autoattack_correct", original_aa)
    assert not list((tmp_path / "b" / "r").rglob("*.json"))

    # 3) finish: dense and compression come from the cache, clean and PGD too
    resumed_runner = Runner(config(tmp_path, tiny_suite, "b"))
    resumed = resumed_runner.run()
    assert resumed_runner.stages.cached == {"dense": True, "compress": True}
    assert_same_run(resumed, reference)


def test_second_method_reuses_the_dense_model(tmp_path, tiny_suite, capsys):
    Runner(config(tmp_path, tiny_suite, "c")).run()
    runner = Runner(
        replace(config(tmp_path, tiny_suite, "c", method="dense", ratio=1), quiet=False)
    )
    record = runner.run()
    assert runner.stages.cached["dense"] is True
    assert "reusing the cached" in capsys.readouterr().err
    assert record["compute"]["dense_reused"] is True
    assert record["compression"]["ratio"] == 1


def test_corrupt_cache_entry_is_detected_and_recomputed(tmp_path, tiny_suite, capsys):
    first = Runner(config(tmp_path, tiny_suite, "d")).run()
    (tensors,) = [
        p / "tensors.safetensors"
        for p in (tmp_path / "d" / "c" / "dense").iterdir()
        if (p / "meta.json").is_file()
    ]
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))
    runner = Runner(replace(config(tmp_path, tiny_suite, "d"), quiet=False))
    again = runner.run()
    assert "cache entry is corrupt" in capsys.readouterr().err
    assert runner.stages.cached["dense"] is False
    assert again["metrics"] == first["metrics"]


def test_cli_prints_the_result_row_and_the_record_path(tmp_path, tiny_suite, cli):
    import json

    code, out, _ = cli(
        "run", "--method", "magnitude", "--ratio", "16", "--suite", tiny_suite, "-q",
        "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert code == 0
    assert "| magnitude" in out and "AutoAttack %" in out
    path = out.strip().splitlines()[-1].removeprefix("record: ")
    record = json.loads(Path(path).read_text())
    assert record["compression"]["ratio"] >= 16
    assert f"{record['compression']['ratio']:.2f}" in out
    lo, hi = record["metrics"]["autoattack"]["ci95"]
    assert lo <= record["metrics"]["autoattack"]["accuracy"] <= hi
    robust, clean = record["metrics"]["autoattack"], record["metrics"]["clean_eval_points"]
    assert robust["accuracy"] <= clean["accuracy"]


def test_sharded_autoattack_merges_to_the_unsharded_result(tmp_path, tiny_suite):
    import shutil

    # chunks of 10 points: the 40 evaluation points make 4 AutoAttack chunks
    suite = get_suite(tiny_suite)
    chunked = replace(
        suite,
        name="digits-tiny-chunked",
        protocols=tuple(replace(p, batch_size=10) for p in suite.protocols),
    )
    with registered(chunked):
        whole = Runner(config(tmp_path, chunked.name, "w")).run()
        shutil.copytree(
            tmp_path / "w" / "c", tmp_path / "s" / "c", ignore=shutil.ignore_patterns("evaluate")
        )
        for i in range(2):
            part = Runner(replace(config(tmp_path, chunked.name, "s"), shard=(i, 2))).run()
            assert part["_shard"] == f"{i}/2"
            assert part["_ranges"] == [(10 * i, 10 * i + 10), (10 * i + 20, 10 * i + 30)]
        assert not list((tmp_path / "s" / "r").rglob("*.json"))  # shards write no record
        chunks = sorted(
            p.name for p in (tmp_path / "s" / "c" / "evaluate").iterdir() if "autoattack" in p.name
        )
        assert len(chunks) == 4
        merged = Runner(config(tmp_path, chunked.name, "s")).run()
        assert merged["metrics"] == whole["metrics"]
