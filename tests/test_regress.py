"""`rbench check`: the tolerance rule, the bookkeeping against the baseline (fast, with the runs
stubbed), and end to end a planted regression that fails the check while unchanged code passes
(slow: real training and attacks on a tiny digits suite)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rbench import regress
from rbench.core.errors import RbenchError
from rbench.core.registry import METHODS, Method, MethodConfig
from rbench.core.suites import SUITES, AttackSpec, Protocol, Suite, ThreatModel, TrainRecipe
from rbench.evaluate.accuracy import wilson_interval
from rbench.layers import apply_masks, magnitude_masks
from rbench.methods import get_method, load_methods

# ------------------------------------------------------------------------- tolerance


def test_allowed_drop_is_the_wilson_upper_bound_plus_slack():
    tol = regress.Tolerance(slack=0.02, confidence=0.95)
    upper = wilson_interval(60, 100)[1]
    assert math.isclose(tol.allowed_drop(60, 100), upper - 0.60 + 0.02, rel_tol=1e-6)
    # more points, a tighter bound; no interval, only the slack
    assert tol.allowed_drop(600, 1000) < tol.allowed_drop(60, 100)
    assert math.isclose(regress.Tolerance(0.02, 0.0).allowed_drop(60, 100), 0.02)
    with pytest.raises(RbenchError, match="--tolerance"):
        regress.Tolerance(slack=-0.1)


def _record(aa: int, pgd: int, n: int = 100) -> dict:
    acc = lambda k: {"accuracy": k / n, "correct": k, "n": n}  # noqa: E731
    return {
        "metrics": {"clean": acc(95), "pgd": acc(pgd), "autoattack": acc(aa)},
        "method": {"variant": "harness"},
        "budget": {"ratio": 4.0},
        "compression": {"ratio": 4.0},
        "compute": {"used_epochs": 1.0},
        "flags": {},
        "hashes": {"compressed": "ab" * 32},
    }


def test_compare_fails_only_beyond_the_tolerance():
    tol = regress.Tolerance()
    entry = regress._entry(_record(aa=60, pgd=65))
    same = regress.compare("m", entry, _record(aa=60, pgd=65), tol)
    assert [r.status for r in same] == ["pass", "pass"] and same[0].drop == 0
    allowed = tol.allowed_drop(50, 100)
    assert allowed >= 0.10  # a 10-point drop at n=100 is within noise + slack
    assert [r.status for r in regress.compare("m", entry, _record(50, 65), tol)] == [
        "pass",
        "pass",
    ]
    rows = regress.compare("m", entry, _record(aa=30, pgd=64), tol)
    assert [(r.metric, r.status) for r in rows] == [("autoattack", "FAIL"), ("pgd", "pass")]
    line = regress.failure_line(rows[0], 100, tol)
    assert line.startswith("REGRESSION m: AutoAttack robust accuracy fell from 60.0% to 30.0%")
    assert "a drop of 30.0 points" in line and "Wilson 95% at n=100 + slack 2.0" in line


# ------------------------------------------------------------------------- bookkeeping


def _fake(name: str, kind: str = "unstructured") -> type[Method]:
    return type(
        name, (Method,), {"name": name, "kind": kind, "citation": "x", "Config": MethodConfig}
    )


@pytest.fixture
def stub_runs(monkeypatch):
    """Replace the real runs by fixed numbers per method (aa, pgd correct of 100)."""
    numbers: dict[str, tuple[int, int] | Exception | str] = {}

    def measure(method, pinned, **kwargs):
        value = numbers[method.name]
        if isinstance(value, Exception):
            raise value
        return value if isinstance(value, str) else _record(*value)

    monkeypatch.setattr(regress, "measure", measure)
    registered: dict[str, type[Method]] = {}
    monkeypatch.setattr(
        regress,
        "select_methods",
        lambda names: [registered[n] for n in (names or sorted(registered))],
    )

    def set_methods(**values):
        numbers.clear(), registered.clear()
        numbers.update(values)
        registered.update({n: _fake(n) for n in values})

    return set_methods


def test_update_then_check_then_regression(tmp_path, stub_runs):
    baseline = tmp_path / "baseline.json"
    stub_runs(a=(60, 65), b=(40, 45))
    with pytest.raises(RbenchError, match="no baseline"):
        regress.run_check(baseline_path=baseline)
    report = regress.run_check(baseline_path=baseline, update=True)
    assert not report.failed and report.updated
    saved = json.loads(baseline.read_text())
    section = saved["suites"]["digits"]
    assert set(section["methods"]) == {"a", "b"}
    assert section["pinned"]["n_eval"] == 100 and section["pinned"]["protocol"] == "quick"

    assert not regress.run_check(baseline_path=baseline).failed

    stub_runs(a=(60, 65), b=(10, 45))
    report = regress.run_check(baseline_path=baseline)
    assert report.failed
    assert [m for m in report.messages if m.startswith("REGRESSION")] == [
        m for m in report.messages if m.startswith("REGRESSION b: AutoAttack")
    ]
    assert json.loads(baseline.read_text()) == saved  # a check never writes the baseline


def test_new_methods_are_reported_not_failed_and_gone_ones_fail(tmp_path, stub_runs):
    baseline = tmp_path / "baseline.json"
    stub_runs(a=(60, 65), old=(50, 50))
    regress.run_check(baseline_path=baseline, update=True)

    stub_runs(a=(60, 65), fresh=(30, 30), cannot="cannot run at the pinned ratio 4: no")
    report = regress.run_check(baseline_path=baseline)
    statuses = {(r.method, r.status) for r in report.rows}
    assert {("fresh", "new"), ("cannot", "skipped"), ("old", "missing")} <= statuses
    assert report.failed  # only because 'old' disappeared
    assert any(m.startswith("MISSING old: in the baseline") for m in report.messages)
    assert not regress.run_check(baseline_path=baseline, methods=["a", "fresh"]).failed

    regress.run_check(baseline_path=baseline, update=True)
    assert set(json.loads(baseline.read_text())["suites"]["digits"]["methods"]) == {"a", "fresh"}


def test_a_crash_fails_the_check_and_keeps_the_others(tmp_path, stub_runs):
    baseline = tmp_path / "baseline.json"
    stub_runs(a=(60, 65), b=(40, 45))
    regress.run_check(baseline_path=baseline, update=True)
    stub_runs(a=ZeroDivisionError("boom"), b=(40, 45))
    report = regress.run_check(baseline_path=baseline)
    assert report.failed
    (line,) = [m for m in report.messages if m.startswith("ERROR")]
    assert line.startswith("ERROR a: ZeroDivisionError: boom (at test_regress.py:")
    assert [r.status for r in report.rows if r.method == "b"] == ["pass", "pass"]


def test_changed_pinned_settings_need_an_update(tmp_path, stub_runs):
    baseline = tmp_path / "baseline.json"
    stub_runs(a=(60, 65))
    regress.run_check(baseline_path=baseline, update=True)
    with pytest.raises(RbenchError, match="rerun with --update"):
        regress.run_check(regress.Pinned(ratio=8), baseline_path=baseline)


def test_a_method_pin_sets_its_ratio_and_options_and_is_part_of_the_settings(monkeypatch):
    seen = []

    class FakeRunner:
        def __init__(self, cfg):
            seen.append(cfg)

    monkeypatch.setattr(regress, "Runner", FakeRunner)
    pinned = regress.Pinned(pins={"b": regress.MethodPin(ratio=2.0, opts=(("k", "v"),))})
    a, b, d = _fake("a"), _fake("b"), _fake("d", kind="dense")
    assert [pinned.ratio_for(m) for m in (a, b, d)] == [4.0, 2.0, 1.0]
    assert pinned.opts_for(a) == () and pinned.opts_for(b) == (("k", "v"),)
    with pytest.raises(AttributeError):  # FakeRunner stops after the config is built
        regress.measure(b, pinned, device="cpu", dense_cache=Path("."), scratch=Path("."),
                        results_dir=Path("."), fresh=True, quiet=True)  # fmt: skip
    assert (seen[0].method, seen[0].ratio, seen[0].opts) == ("b", 2.0, (("k", "v"),))
    settings = pinned.describe()
    assert settings["method_pins"] == {"b": {"ratio": 2.0, "opts": {"k": "v"}}}
    assert json.loads(json.dumps(settings)) == settings  # compares equal once read back
    assert settings != regress.Pinned(pins={}).describe()
    lth = regress.Pinned()
    assert lth.opts_for(get_method("lth-adv")) == (("rewind_to", "round0_trained"),)
    assert lth.ratio_for(get_method("lth-adv")) == 4.0


def test_a_method_at_chance_is_named(tmp_path, stub_runs):
    stub_runs(good=(60, 65), chance=(6, 15))
    report = regress.run_check(baseline_path=tmp_path / "b.json", update=True)
    (line,) = [m for m in report.messages if m.startswith("AT CHANCE")]
    assert line.startswith("AT CHANCE chance: robust accuracy 15.0% is at most 1.5 x chance")


def test_cli_check_exit_codes(tmp_path, stub_runs, cli):
    baseline = str(tmp_path / "baseline.json")
    stub_runs(a=(60, 65))
    assert cli("check", "--baseline", baseline, "--update").code == 0
    stub_runs(a=(20, 65))
    code, out, _ = cli("check", "--baseline", baseline, "--methods", "a")
    assert code == 1
    assert "REGRESSION a: AutoAttack robust accuracy fell from 60.0% to 20.0%" in out
    assert out.rstrip().endswith("check: FAILED")


def test_committed_baseline_matches_the_pinned_run():
    """The committed baseline is for today's pinned settings and covers dense and magnitude."""
    root = Path(__file__).resolve().parent.parent
    section = regress.load_baseline(root / regress.DEFAULT_BASELINE)["suites"]["digits"]
    assert section["pinned"] == regress.Pinned().describe()
    assert {"dense", "magnitude"} <= set(section["methods"])
    assert section["methods"]["dense"]["ratio"] == 1
    for name, entry in section["methods"].items():  # a baseline at chance guards nothing
        best = max(entry[m]["accuracy"] for m in regress.METRICS)
        assert best > regress.CHANCE / 10, f"{name} is at chance in the baseline"


# ------------------------------------------------------------------------- end to end

TINY = Suite(
    name="digits-tiny-check",
    version=1,
    description="digits with a 3-epoch dense recipe and 50 eval points: for testing the check",
    dataset="digits",
    arch="smallcnn",
    threat=ThreatModel("Linf", "0.1"),
    dense=TrainRecipe(3, 64, "adam", 1e-3, AttackSpec(7, 0.25), eps_ramp=1 / 3),
    compress_epochs=1,
    protocols=(
        Protocol("quick", 50, AttackSpec(10, 0.1), "custom", ("apgd-ce",), apgd_restarts=1),
    ),
)


class Planted(Method):
    """A dense-kind test double (run at ratio 1) that returns the dense model; `BROKEN` plants a
    regression: a bug that keeps only the smallest quarter of each layer's weights."""

    name = "planted"
    kind = "dense"
    citation = "a test double"
    BROKEN = False

    def compress(self, model, budget, ctx):
        if Planted.BROKEN:
            apply_masks(model, magnitude_masks(model, 4, score=lambda m: -m.weight.abs()))
        return model


@pytest.mark.slow
def test_planted_regression_fails_and_unchanged_code_passes(tmp_path, monkeypatch, cli):
    load_methods()
    monkeypatch.setitem(SUITES, TINY.name, TINY)
    monkeypatch.setitem(METHODS, Planted.name, Planted)
    base = ["check", "--suite", TINY.name, "--methods", "planted"]
    base += ["--baseline", str(tmp_path / "b.json"), "--cache-dir", str(tmp_path / "cache")]
    runs: list = []

    def check(*extra: str, broken: bool) -> tuple[int, str, dict]:
        monkeypatch.setattr(Planted, "BROKEN", broken)
        out_dir = tmp_path / f"records-{len(runs)}"
        runs.append(out_dir)
        code, out, _ = cli(*base, "--results-dir", str(out_dir), *extra)
        (path,) = out_dir.rglob("*.json")
        return code, out, json.loads(path.read_text())

    code, _, good = check("--update", broken=False)
    assert code == 0
    entry = json.loads((tmp_path / "b.json").read_text())["suites"][TINY.name]["methods"]
    assert entry["planted"]["autoattack"]["correct"] == good["metrics"]["autoattack"]["correct"]

    code, out, bad = check(broken=True)
    drop = good["metrics"]["autoattack"]["accuracy"] - bad["metrics"]["autoattack"]["accuracy"]
    assert code == 1, out
    assert (
        f"REGRESSION planted: AutoAttack robust accuracy fell from "
        f"{100 * good['metrics']['autoattack']['accuracy']:.1f}% to "
        f"{100 * bad['metrics']['autoattack']['accuracy']:.1f}%, a drop of {100 * drop:.1f} points"
    ) in out
    assert "check: FAILED" in out

    code, out, again = check(broken=False)
    assert code == 0, out
    assert "check: passed" in out
    # deterministic on a CPU: the unchanged code reproduces the baseline exactly, from the cache
    for metric in ("clean", "pgd", "autoattack"):
        assert again["metrics"][metric]["correct"] == good["metrics"][metric]["correct"]
    assert again["compute"]["dense_reused"] and not good["compute"]["dense_reused"]
