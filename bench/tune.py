"""The declared tuning protocol: one rule picks every method's fine-tuning rate, on validation data.

Rule (design.md 8b): at one stated ratio and seed, compress with the method's rate fields set to
each value of a small grid (multiples of the method's own default rate, so an SGD method and an
Adam one are tuned alike), then measure every result on the **validation** split: PGD accuracy
(the protocol's PGD) on its first `n_val` points, ties broken by clean validation accuracy, then
by the smaller rate. The best value is written to `<out>/<suite>/<method>.json`, with every grid
point's scores and the compute the search spent (reported apart from the compression budget).
`rbench run --tuning <out>` then applies the choice, and the record says so. The test split is
never loaded into the search: the splits it works on have no test part.
"""

from __future__ import annotations

import json
from pathlib import Path

from rbench.core.budget import measure_compression, verify_ratio
from rbench.core.config import RunConfig
from rbench.core.errors import RbenchError
from rbench.core.registry import Method
from rbench.core.suites import Suite
from rbench.data.datasets import load_data
from rbench.data.splits import DataSplits
from rbench.dense import dense_model
from rbench.evaluate import accuracy as ev
from rbench.store.cache import atomic_write_json
from rbench.store.records import environment
from rbench.store.tuning import SCHEMA, tuning_path

MULTIPLES = (0.2, 0.4, 1.0, 2.0)  # of the method's default rate
RATIO, SEED = 16.0, 0


def grid_values(method_cls: type[Method], suite: Suite, multiples=MULTIPLES) -> list[float]:
    base = method_cls.default_rate(suite)
    if base is None:
        raise RbenchError(f"method '{method_cls.name}' has no fine-tuning rate to tune")
    return [float(f"{base * m:.6g}") for m in multiples]


def _search_splits(runner) -> DataSplits:
    """Training and validation splits on the run's device; the test split is never handed on."""
    data = load_data(runner.suite.dataset, runner.cfg.data_root)
    return DataSplits(data.info, data.train.to(runner.device), data.val.to(runner.device), None)


def _score(runner, value: float, n_val: int, splits: DataSplits) -> dict:
    """Compress with the rate fields at `value`; scores on the validation split only."""
    dense, _ = dense_model(runner, splits)
    model, meta = runner.compress(dense, splits)
    verify_ratio(
        measure_compression(dense, model, runner.suite.data.input_shape),
        runner.budget.ratio,
        runner.method_cls.name,
    )
    val = splits.val.head(n_val)
    threat, protocol, device, seed = (
        runner.suite.threat,
        runner.protocol,
        runner.device,
        runner.cfg.seed,
    )
    pgd = ev.pgd_correct(model, val, threat, protocol.pgd, device, seed)
    clean = ev.clean_correct(model, val, device)
    return {
        "value": value,
        "val_pgd": round(pgd.float().mean().item(), 6),
        "val_clean": round(clean.float().mean().item(), 6),
        "n_val": len(val),
        "compute_epochs": meta["compute_epochs"],
        "diverged": meta.get("diverged"),
    }


def tune(
    base: RunConfig,
    out: Path | str,
    multiples=MULTIPLES,
    n_val: int = 500,
    say=print,
    force: bool = False,
) -> dict:
    """Search the grid for `base.method` at `base.ratio` and `base.seed`; write and return the
    tuning record."""
    from rbench.runner import Runner

    probe = Runner(base)
    method_cls, suite = probe.method_cls, probe.suite
    path = tuning_path(out, suite.name, method_cls.name)
    if not force and path.is_file():
        from rbench.store.tuning import read_tuning

        read_tuning(out, suite, method_cls)  # an unusable record is an error, not a skip
        say(f"tune: {path} exists; skipping (--force to search again)")
        return json.loads(path.read_text(encoding="utf-8"))
    fields = method_cls.tuned_fields()
    if not fields:
        raise RbenchError(f"method '{method_cls.name}' has no fine-tuning rate to tune")
    if set(fields) & {k for k, _ in base.opts}:
        raise RbenchError(f"--opt may not set a tuned field ({', '.join(fields)}) in a search")
    points, splits = [], _search_splits(probe)  # loaded once for the whole grid
    for value in grid_values(method_cls, suite, multiples):
        opts = base.opts + tuple((f, repr(value)) for f in fields)
        cfg = RunConfig(**{**base.__dict__, "opts": opts})
        say(f"tune: {method_cls.name} with {', '.join(fields)} = {value:g}")
        points.append(_score(Runner(cfg), value, n_val, splits))
    best = max(points, key=lambda p: (p["val_pgd"], p["val_clean"], -p["value"]))
    record = {
        "schema": SCHEMA,
        "suite": {"name": suite.name, "version": suite.version},
        "method": method_cls.name,
        "fields": list(fields),
        "rule": (
            f"rates {', '.join(f'{m:g}' for m in multiples)} x the method's default; the highest "
            f"PGD accuracy on the first {points[0]['n_val']} validation points (ties: clean validation "
            "accuracy, then the smaller rate)"
        ),
        "ratio": probe.budget.ratio,
        "seed": base.seed,
        "budget_epochs": probe.budget.epochs,
        "protocol_pgd": {"steps": probe.protocol.pgd.steps},
        "selection_split": "val",
        "grid": points,
        "chosen": best["value"],
        "compute_epochs": round(sum(p["compute_epochs"] for p in points), 4),
        "environment": environment(probe.device),
    }
    atomic_write_json(path, record)
    say(f"tune: {method_cls.name} chooses {best['value']:g} -> {path}")
    return record
