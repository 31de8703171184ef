"""Out-of-tree methods: the example plugin under examples/ is discovered through the
`rbench.methods` entry point (and only through it) and runs through the CLI; the copyable method
template in methods/_template.py is a correct method."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rbench.core.budget import measure_compression
from rbench.core.errors import RbenchError
from rbench.core.registry import METHODS, Method
from rbench.layers import finalize

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "rbench-example-plugin"
PACKAGE = "rbench_example_plugin"


def _project() -> dict:
    return tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]


def install_by_metadata(target: Path, with_entry_point: bool = True) -> Path:
    """What `pip install` leaves in site-packages, built by hand: the package and a .dist-info
    whose entry_points.txt is generated from the plugin's own pyproject.toml."""
    shutil.copytree(PLUGIN / "src" / PACKAGE, target / PACKAGE)
    project = _project()
    info = target / f"{PACKAGE}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    if with_entry_point:
        lines = ["[rbench.methods]"]
        lines += [f"{k} = {v}" for k, v in project["entry-points"]["rbench.methods"].items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return target


def rbench_cli(
    args: list[str], pythonpath: Path, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-m", "rbench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=pythonpath,
    )


def test_pyproject_declares_the_entry_point():
    project = _project()
    eps = project["entry-points"]["rbench.methods"]
    assert eps == {"example-random": f"{PACKAGE}.random_prune:RandomPrune"}
    assert "rbench" in project["dependencies"]


def test_plugin_is_listed_only_through_its_entry_point(tmp_path):
    with_ep = install_by_metadata(tmp_path / "with")
    listed = rbench_cli(["list", "methods"], with_ep)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "example-random" in line)
    assert "unstructured" in row and "Random unstructured pruning" in row
    assert "magnitude" in listed.stdout  # the in-tree methods are still there
    assert "| template " not in listed.stdout  # methods/_template.py is never loaded

    # the same code importable, but no entry point: rbench must not see it
    without = install_by_metadata(tmp_path / "without", with_entry_point=False)
    unlisted = rbench_cli(["list", "methods"], without)
    assert unlisted.returncode == 0 and "example-random" not in unlisted.stdout


def test_plugin_method_reaches_the_ratio(monkeypatch, trained_digits_model, make_ctx):
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    from rbench_example_plugin.random_prune import RandomPrune

    assert issubclass(RandomPrune, Method) and "example-random" not in METHODS
    dense = trained_digits_model
    ctx = make_ctx(ratio=8, epochs=0.06)
    model = RandomPrune().compress(copy.deepcopy(dense), ctx.budget, ctx)
    report = measure_compression(dense, finalize(model), (1, 8, 8))
    assert report["n_stored"] == math.floor(report["n_dense"] / 8)
    assert 0 < ctx.meter.used_epochs <= 0.06 * 1.05
    with pytest.raises(RbenchError, match="cannot be reached"):
        RandomPrune().check(dense, type(ctx.budget)(ratio=1e6, epochs=1))


@pytest.fixture
def template_method():
    """Import the template (which registers 'template') and take it back out afterwards."""
    before = dict(METHODS)
    from rbench.methods import _template

    yield _template.TemplateMethod
    METHODS.clear()
    METHODS.update(before)


def test_template_is_a_correct_method(template_method, trained_digits_model, make_ctx):
    cls = template_method
    assert cls.kind in ("dense", "unstructured", "structured", "low-rank") and cls.citation
    assert cls.Config().variant == "harness" and set(cls.variants) == {"harness", "paper"}
    dense = trained_digits_model
    for variant in cls.variants:
        ctx = make_ctx(ratio=4, epochs=0.06)
        method = cls(cls.Config(variant=variant))
        model = method.compress(copy.deepcopy(dense), ctx.budget, ctx)
        report = measure_compression(dense, finalize(model), (1, 8, 8))
        assert report["n_stored"] == math.floor(report["n_dense"] / 4)
        assert 0 < ctx.meter.used_epochs <= 0.06 * 1.05
        assert set(ctx.report["layer_density"]) == {r["layer"] for r in report["per_layer"]}
    with pytest.raises(RbenchError, match="keeps none"):
        cls().check(dense, type(ctx.budget)(ratio=1e6, epochs=1))


@pytest.mark.slow
def test_pip_installed_plugin_runs_through_the_cli(tmp_path, dense_checkpoint):
    """A real `pip install` of the example package, then `rbench run` and `rbench validate`."""
    source = tmp_path / "src-copy"
    shutil.copytree(PLUGIN, source)  # pip builds in the source tree: keep examples/ clean
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    run = rbench_cli(
        ["run", "-m", "example-random", "-r", "4", "-s", "digits", "--protocol", "quick",
         "--epochs", "0.6", "--device", "cpu", "--dense-checkpoint", str(dense_checkpoint),
         "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), "-q"],
        target,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (path,) = (tmp_path / "results").rglob("*.json")
    record = json.loads(path.read_text())
    assert record["method"]["name"] == "example-random"
    assert record["compression"]["ratio"] >= 4
    checked = rbench_cli(["validate", str(path)], target)
    assert checked.returncode == 0, checked.stdout
