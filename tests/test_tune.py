"""The tuning protocol (rbench.tune): the search scores on the validation split only, picks the
best value by the declared rule, writes a record a run then applies, and refuses a record made
for another suite version."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import registered, tiny_digits

import rbench.data.datasets as datasets
import rbench.tune as tune_module
from rbench.core.config import RunConfig
from rbench.core.errors import RbenchError
from rbench.data.splits import DataSplits
from rbench.runner import Runner
from rbench.store.tuning import read_tuning, tuning_path


class SealedSplit:
    """A test split that fails the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the tuning search read the test split ({name})")

    def __len__(self):
        raise AssertionError("the tuning search read the test split (len)")


def test_the_search_never_reads_the_test_split_and_its_choice_is_applied(tmp_path, monkeypatch):
    real = datasets.load_data

    def sealed(name, data_root=None):
        data = real(name, data_root)
        return DataSplits(data.info, data.train, data.val, SealedSplit())

    monkeypatch.setattr(datasets, "load_data", sealed)
    monkeypatch.setattr(tune_module, "load_data", sealed)
    suite = tiny_digits("tune-digits", dense_epochs=2, compress_epochs=0.5, n_eval=20)
    with registered(suite) as name:
        base = RunConfig(
            method="magnitude",
            ratio=4,
            suite=name,
            cache_dir=str(tmp_path / "cache"),
            results_dir=str(tmp_path / "results"),
            quiet=True,
        )
        record = tune_module.tune(
            base, tmp_path / "tuning", multiples=(0.2, 1.0), say=lambda m: None
        )
        points = record["grid"]
        assert [p["value"] for p in points] == [0.01, 0.05]  # multiples of the suite's 0.05
        assert all(p["n_val"] == 200 and 0 <= p["val_pgd"] <= 1 for p in points)
        best = max(points, key=lambda p: (p["val_pgd"], p["val_clean"], -p["value"]))
        assert record["chosen"] == best["value"] and record["selection_split"] == "val"
        assert record["compute_epochs"] == pytest.approx(
            sum(p["compute_epochs"] for p in points), abs=1e-3
        )
        path = tuning_path(tmp_path / "tuning", name, "magnitude")
        assert json.loads(path.read_text())["chosen"] == record["chosen"]

        runner = Runner(replace(base, tuning=str(tmp_path / "tuning")))
        assert runner.config.lr == record["chosen"] and runner.tuning["applied"]
        overridden = Runner(replace(base, tuning=str(tmp_path / "tuning"), opts=(("lr", "0.3"),)))
        assert overridden.config.lr == 0.3 and not overridden.tuning["applied"]

        stale = json.loads(path.read_text())
        stale["suite"]["version"] += 1
        path.write_text(json.dumps(stale))
        with pytest.raises(RbenchError, match="is not for magnitude"):
            read_tuning(tmp_path / "tuning", suite, runner.method_cls)


def test_a_method_without_a_rate_cannot_be_tuned(tmp_path):
    base = RunConfig(
        method="dense", ratio=1, suite="digits", cache_dir=str(tmp_path), results_dir=str(tmp_path)
    )
    with pytest.raises(RbenchError, match="no fine-tuning rate"):
        tune_module.tune(base, tmp_path / "tuning", say=lambda m: None)
