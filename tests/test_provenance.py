"""Provenance in every record: the packages that registered a method (entry points) with their
versions, the sha256 of in-tree method files not committed to git, the file of the method that
ran, and the requested ratio exactly as asked (16.0000001 is not 16, in the record, in its file
name and in the printed row, which puts clean accuracy on the evaluated points beside the robust
accuracies)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import click
import pytest
from test_plugin import install_by_metadata

from rbench.cli.run import Typed
from rbench.methods import get_method
from rbench.report.tables import result_table
from rbench.store.provenance import method_provenance, uncommitted_sources
from rbench.store.records import ratio_label, record_stem


def test_installed_plugin_packages_are_listed_with_their_versions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(install_by_metadata(tmp_path / "site")))
    found = method_provenance(get_method("magnitude"))
    assert {
        "method": "example-random",
        "entry_point": "rbench_example_plugin.random_prune:RandomPrune",
        "package": "rbench-example-plugin",
        "version": "0.1.0",
    } in found["plugins"]
    ran = found["ran"]
    source = Path(__file__).parents[1] / "methods" / "magnitude.py"
    assert ran == {
        "module": "rbench.methods.magnitude",
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }


def _git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=folder,
        check=True,
        capture_output=True,
    )


def test_method_files_not_committed_are_hashed(tmp_path):
    repo = tmp_path / "repo"
    methods = repo / "methods"
    methods.mkdir(parents=True)
    for name in ("kept.py", "edited.py", "staged.py"):
        (methods / name).write_text(f"# {name}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "x")
    (methods / "edited.py").write_text("# edited\n")
    (methods / "staged.py").write_text("# staged\n")
    _git(repo, "add", "methods/staged.py")
    (methods / "new.py").write_text("# new\n")
    (methods / "notes.txt").write_text("not code\n")
    found = uncommitted_sources(methods)
    assert found == {
        name: hashlib.sha256((methods / name).read_bytes()).hexdigest()
        for name in ("edited.py", "new.py", "staged.py")
    }
    assert uncommitted_sources(tmp_path / "elsewhere") is None  # not a checkout: cannot tell


def test_the_requested_ratio_is_kept_and_shown_exactly():
    value, text = Typed().convert("16.0000001", None, None)
    assert (value, text) == (16.0000001, "16.0000001")
    with pytest.raises(click.BadParameter, match="'abc' is not a valid float"):
        Typed().convert("abc", None, None)
    assert ratio_label(16.0) == "16" and ratio_label(2.5) == "2.5"
    assert ratio_label(16.0000001) == "16.0000001"
    assert record_stem("harness", 16.0000001, 0) != record_stem("harness", 16.0, 0)


def _record(ratio: float, typed: str | None) -> dict:
    def acc(k, n):
        return {"accuracy": k / n, "correct": k, "n": n, "ci95": [k / n - 0.01, k / n + 0.01]}

    budget = {"ratio": ratio, "epochs": 1.0}
    if typed is not None:
        budget["ratio_requested"] = typed
    return {
        "suite": {"name": "digits"},
        "method": {"name": "magnitude", "variant": "harness"},
        "budget": budget,
        "compression": {"ratio": 16.0, "macs_ratio": 3.0},
        "metrics": {
            "clean": acc(360, 400),  # the whole test split
            "clean_eval_points": acc(70, 100),  # the points PGD and AutoAttack were run on
            "pgd": acc(50, 100),
            "autoattack": acc(45, 100),
        },
        "compute": {"used_epochs": 1.0, "budget_epochs": 1.0},
        "protocol": {"name": "quick"},
    }


def test_the_row_tells_two_requests_apart_and_shows_clean_on_the_eval_points():
    table = result_table([_record(16.0, "16"), _record(16.0000001, None)])
    rows = [line for line in table.splitlines() if "magnitude" in line]
    assert "| 16 " in rows[0] and "| 16.0000001 " in rows[1]
    assert "70.0 [69.0, 71.0]" in rows[0] and "90.0" not in rows[0]
    assert "n=100" in rows[0]
