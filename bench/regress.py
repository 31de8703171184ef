"""`rbench check`: rerun the pinned regression suite and compare robust accuracy with a committed
baseline (design.md 1, "CI of this repo and of users").

The pinned run (`Pinned`): the embedded `digits` suite, its `quick` protocol (APGD-CE + APGD-T,
one restart, n_eval = 100, plus the suite's PGD), ratio 4 (ratio 1 for a dense-kind method), a
compression budget of 1 AT-epoch, seed 0, on the CPU. Every registered method runs at its default
configuration through `rbench.runner.Runner`, exactly as `rbench run` would, except where
`METHOD_PINS` gives it another ratio or options: a baseline at chance can never show a regression,
so `rbench check` names any method at chance and `METHOD_PINS` moves it (`lth-adv`, below). Its
run time on a 2-core CPU is in docs/findings.md ("harness").

Caching: the dense model comes from the artifact cache (trained once, then shared by every method
and every later check; `fresh=True` retrains it). The compress and evaluate stages are always
recomputed, in a scratch cache deleted afterwards, so a change of shared code is always seen.

Tolerance, per method and per metric (AutoAttack and PGD robust accuracy): with k of n points
correct now and baseline accuracy p0, the check fails when

    p0 > upper(k, n) + slack,

where upper is the upper end of the Wilson score interval of k/n at `confidence` (95% by default,
two-sided, as in every record) and `slack` is 0.02 (two accuracy points). At n = 100 and accuracy
0.6 this allows a drop of 9.1 + 2 = 11.1 points: the check catches breakage and large losses
of robustness, not one-point changes, which n = 100 cannot tell from noise. On one machine the
run is deterministic (same seed, same CPU), so unchanged code reproduces the baseline exactly.

Methods not in the baseline are reported and not failed; a method whose `check` refuses the pinned
ratio is skipped and reported; a method that crashes, or that is in the baseline but no longer
registered, fails the check. `update=True` rewrites the suite's section of the baseline on purpose.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import torch

from rbench.core.config import RunConfig, default_cache_dir
from rbench.core.errors import RbenchError
from rbench.core.registry import Method
from rbench.core.suites import get_suite
from rbench.evaluate.accuracy import wilson_interval
from rbench.methods import get_method, load_methods
from rbench.runner import Runner
from rbench.store.cache import Store, atomic_write_json

BASELINE_SCHEMA = "rbench.baseline/1"
DEFAULT_BASELINE = Path("leaderboard") / "baseline.json"
METRICS = ("autoattack", "pgd")  # what may not drop; clean accuracy is recorded for reading
METRIC_NAMES = {"autoattack": "AutoAttack", "pgd": "PGD", "clean": "clean"}
CHANCE = 1.5  # robust accuracy at most this multiple of chance: the check cannot see a drop


@dataclass(frozen=True)
class MethodPin:
    """A method's departure from the common pinned run: its own ratio and/or `--opt` options."""

    ratio: float | None = None  # None: the common pinned ratio
    opts: tuple[tuple[str, str], ...] = ()


# Baselines at chance cannot show a regression (docs/findings.md, "radmm's ADMM ... lth-adv in
# rbench check"): lth-adv's default rewinding is at chance within 1 AT-epoch (6% AutoAttack at
# ratio 4), its released code's round0_trained is not (49%); random pruning at ratio 4 is (8%),
# at ratio 2 it is not (42%).
METHOD_PINS: dict[str, MethodPin] = {
    "lth-adv": MethodPin(opts=(("rewind_to", "round0_trained"),)),
    "random": MethodPin(ratio=2.0),
}


@dataclass(frozen=True)
class Pinned:
    """The regression run: small enough for a 2-core CPU (see the module docstring)."""

    suite: str = "digits"
    protocol: str = "quick"
    ratio: float = 4.0
    epochs: float = 1.0  # compression budget, AT-epochs
    seed: int = 0
    pins: dict[str, MethodPin] = field(default_factory=lambda: dict(METHOD_PINS))

    def ratio_for(self, method: type[Method]) -> float:
        if method.kind == "dense":
            return 1.0
        pin = self.pins.get(method.name)
        return pin.ratio if pin is not None and pin.ratio is not None else self.ratio

    def opts_for(self, method: type[Method]) -> tuple[tuple[str, str], ...]:
        pin = self.pins.get(method.name)
        return pin.opts if pin is not None else ()

    def describe(self) -> dict:
        """The settings a baseline is valid for (the suite's version and n_eval included)."""
        suite = get_suite(self.suite)
        settings = asdict(self)
        pins = settings.pop("pins")
        return {
            **settings,
            "suite_version": suite.version,
            "n_eval": suite.protocol(self.protocol).n_eval,
            "method_pins": {n: {**p, "opts": dict(p["opts"])} for n, p in sorted(pins.items())},
        }


@dataclass(frozen=True)
class Tolerance:
    slack: float = 0.02
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0 <= self.slack < 1:
            raise RbenchError(f"--tolerance must be in [0, 1), got {self.slack}")
        if not 0 <= self.confidence < 1:
            raise RbenchError(f"--confidence must be in [0, 1), got {self.confidence}")

    def allowed_drop(self, correct: int, n: int) -> float:
        """How far below the current estimate the baseline may lie before it is a regression."""
        z = NormalDist().inv_cdf(0.5 + self.confidence / 2)
        return wilson_interval(correct, n, z)[1] - correct / max(n, 1) + self.slack

    def describe(self, n: int) -> str:
        return f"Wilson {self.confidence:.0%} at n={n} + slack {100 * self.slack:.1f}"


@dataclass
class Comparison:
    method: str
    metric: str
    baseline: float | None
    now: float | None
    allowed: float | None  # how far (a fraction) the baseline may lie above `now`
    status: str  # pass | FAIL | new | updated | skipped | error | missing

    @property
    def drop(self) -> float | None:
        return None if self.baseline is None or self.now is None else self.baseline - self.now


@dataclass
class CheckReport:
    rows: list[Comparison] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    baseline_path: Path | None = None
    updated: bool = False

    @property
    def failed(self) -> bool:
        return any(r.status in ("FAIL", "error", "missing") for r in self.rows)


class _DenseReuse(Store):
    """Dense models from the persistent cache; every later stage in a scratch directory."""

    def __init__(self, root: str | Path, scratch: str | Path) -> None:
        super().__init__(root)
        self.scratch = Path(scratch)

    def dir(self, stage: str, key: str) -> Path:
        return super().dir(stage, key) if stage == "dense" else self.scratch / stage / key


# ------------------------------------------------------------------------------ baseline


def load_baseline(path: Path) -> dict:
    if not path.exists():
        return {"schema": BASELINE_SCHEMA, "suites": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RbenchError(f"the baseline '{path}' is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise RbenchError(f"'{path}' is not an rbench baseline (schema {BASELINE_SCHEMA})")
    return data


def _entry(record: dict) -> dict:
    """What the baseline keeps of one run's record."""
    m = record["metrics"]
    return {
        "variant": record["method"]["variant"],
        "ratio": record["budget"]["ratio"],
        "measured_ratio": round(record["compression"]["ratio"], 4),
        "compute_epochs": round(record["compute"]["used_epochs"], 4),
        **{k: {f: m[k][f] for f in ("accuracy", "correct", "n")} for k in ("clean", *METRICS)},
        "flags": sorted(record["flags"]),
        "compressed_sha256": record["hashes"]["compressed"],
    }


# ------------------------------------------------------------------------------ running


def select_methods(names: Sequence[str] | None) -> list[type[Method]]:
    if names:
        return [get_method(n) for n in dict.fromkeys(names)]
    return sorted(load_methods().values(), key=lambda m: m.name)


def measure(
    method: type[Method],
    pinned: Pinned,
    *,
    device: str,
    dense_cache: Path,
    scratch: Path,
    results_dir: Path,
    fresh: bool,
    quiet: bool,
) -> dict | str:
    """The record of one pinned run, or the reason the method cannot run at the pinned ratio."""
    cfg = RunConfig(
        method=method.name,
        ratio=pinned.ratio_for(method),
        opts=pinned.opts_for(method),
        suite=pinned.suite,
        seed=pinned.seed,
        device=device,
        protocol=pinned.protocol,
        epochs=pinned.epochs,
        results_dir=str(results_dir),
        cache_dir=str(scratch),
        quiet=quiet,
    )
    runner = Runner(cfg)
    if not fresh:
        runner.store = _DenseReuse(dense_cache, scratch)
    try:
        runner.method_cls(runner.config).check(runner.new_model(), runner.budget)
    except RbenchError as exc:
        return f"cannot run at the pinned ratio {cfg.ratio:g}: {exc}"
    return runner.run()


def compare(
    name: str, entry: dict | None, record: dict, tol: Tolerance, update: bool = False
) -> list[Comparison]:
    rows = []
    for metric in METRICS:
        now = record["metrics"][metric]
        base = None if entry is None else entry[metric]["accuracy"]
        allowed = tol.allowed_drop(now["correct"], now["n"])
        if update or base is None:
            status = "updated" if update else "new"
        else:
            status = "FAIL" if base - now["accuracy"] > allowed + 1e-12 else "pass"
        rows.append(Comparison(name, metric, base, now["accuracy"], allowed, status))
    return rows


def at_chance(name: str, record: dict, classes: int) -> str | None:
    """A message when the method's robust accuracy is at chance: no drop could show there."""
    best = max(record["metrics"][m]["accuracy"] for m in METRICS)
    if best > CHANCE / classes:
        return None
    return (
        f"AT CHANCE {name}: robust accuracy {100 * best:.1f}% is at most {CHANCE:g} x chance, so "
        "the check cannot show a regression; pin another ratio or options for it "
        "(rbench.regress.METHOD_PINS)"
    )


def _crash(exc: Exception) -> str:
    if isinstance(exc, RbenchError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__}: {exc} (at {Path(frame.filename).name}:{frame.lineno})"


def failure_line(row: Comparison, n: int, tol: Tolerance) -> str:
    return (
        f"REGRESSION {row.method}: {METRIC_NAMES[row.metric]} robust accuracy fell from "
        f"{100 * row.baseline:.1f}% to {100 * row.now:.1f}%, a drop of {100 * row.drop:.1f} "
        f"points; allowed {100 * row.allowed:.1f} ({tol.describe(n)})"
    )


def run_check(
    pinned: Pinned = Pinned(),
    *,
    baseline_path: Path = DEFAULT_BASELINE,
    tolerance: Tolerance = Tolerance(),
    methods: Sequence[str] | None = None,
    update: bool = False,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    results_dir: str | Path | None = None,
    fresh: bool = False,
    quiet: bool = True,
    say: Callable[[str], None] | None = None,
) -> CheckReport:
    """Run the pinned suite for `methods` (default: every registered one), compare with the
    baseline, and with `update` write the new numbers into it. Raises RbenchError on bad input."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    baseline_path = Path(baseline_path)
    baseline = load_baseline(baseline_path)
    if not update and not baseline_path.exists():
        raise RbenchError(
            f"no baseline at '{baseline_path}'; create one with `rbench check --update`"
        )
    pinned_now = pinned.describe()
    section = baseline["suites"].get(pinned.suite)
    if section is not None and section.get("pinned") != pinned_now and not update:
        raise RbenchError(
            f"the baseline for '{pinned.suite}' was made with {section.get('pinned')}, the pinned "
            f"run is now {pinned_now}; rerun with --update to accept the new settings"
        )
    entries = dict(section["methods"]) if section and section.get("pinned") == pinned_now else {}
    selected = select_methods(methods)
    classes = get_suite(pinned.suite).data.num_classes
    report = CheckReport(baseline_path=baseline_path)
    measured: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rbench-check-") as scratch:
        scratch = Path(scratch)
        out_dir = Path(results_dir) if results_dir else scratch / "records"
        dense_cache = Path(cache_dir) if cache_dir else default_cache_dir()
        for method in selected:
            start = time.perf_counter()
            opts = "".join(f" --opt {k}={v}" for k, v in pinned.opts_for(method))
            say(
                f"check: {method.name} on {pinned.suite} at ratio {pinned.ratio_for(method):g}{opts} ..."
            )
            try:
                result = measure(
                    method,
                    pinned,
                    device=device,
                    dense_cache=dense_cache,
                    scratch=scratch,
                    results_dir=out_dir,
                    fresh=fresh,
                    quiet=quiet,
                )
            except Exception as exc:  # one broken method must not hide the others' results
                report.rows.append(Comparison(method.name, "-", None, None, None, "error"))
                report.messages.append(f"ERROR {method.name}: {_crash(exc)}")
                continue
            if isinstance(result, str):
                report.rows.append(Comparison(method.name, "-", None, None, None, "skipped"))
                report.messages.append(f"skipped {method.name}: {result}")
                continue
            say(f"check: {method.name} done in {time.perf_counter() - start:.0f} s")
            measured[method.name] = _entry(result)
            rows = compare(method.name, entries.get(method.name), result, tolerance, update)
            report.rows += rows
            n = result["metrics"]["autoattack"]["n"]
            report.messages += [failure_line(r, n, tolerance) for r in rows if r.status == "FAIL"]
            if message := at_chance(method.name, result, classes):
                report.messages.append(message)
            if not update and method.name not in entries:
                report.messages.append(
                    f"new {method.name}: not in the baseline; add it with `rbench check --update`"
                )
    gone = sorted(set(entries) - {m.name for m in selected}) if not methods else []
    if update:
        kept = {k: v for k, v in entries.items() if k not in gone}  # a crash keeps its guard
        _write_update(baseline, baseline_path, pinned, pinned_now, {**kept, **measured})
        report.updated = True
        report.messages += [f"dropped {name}: no longer registered" for name in gone]
        report.messages.append(
            f"baseline '{baseline_path}' updated for {', '.join(sorted(measured)) or 'no method'}"
        )
        return report
    for name in gone:
        report.rows.append(Comparison(name, "-", None, None, None, "missing"))
        report.messages.append(
            f"MISSING {name}: in the baseline but no longer registered; "
            f"run `rbench check --update` to drop it on purpose"
        )
    return report


def _write_update(
    baseline: dict, path: Path, pinned: Pinned, pinned_now: dict, entries: dict
) -> None:
    baseline["suites"][pinned.suite] = {
        "pinned": pinned_now,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "methods": dict(sorted(entries.items())),
    }
    baseline["note"] = (
        "Written by `rbench check --update`; `rbench check` fails when a method's AutoAttack or "
        "PGD robust accuracy falls below these by more than its tolerance (rbench.regress)."
    )
    atomic_write_json(path, baseline)
