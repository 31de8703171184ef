"""What the CLI prints: the result row, the per-layer diagnostics table, and the diagnostics
of a record or checkpoint that `rbench diagnose` shows. Formatting only; no click here."""

from __future__ import annotations

import sys

from tabulate import tabulate

from rbench.core.errors import RbenchError


def _pct(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def requested_ratio(budget: dict) -> str:
    """The requested ratio as typed, else as short as it can be written without being mistaken
    for another ('16', but '16.0000001')."""
    from rbench.store.records import ratio_label

    typed = budget.get("ratio_requested")
    return typed if typed is not None else ratio_label(budget["ratio"])


def result_table(records: list[dict]) -> str:
    """One row per record. Every accuracy in it is on the same points, the protocol's first
    n_eval test points (clean accuracy on the whole test split stays in the record)."""
    rows = []
    for r in records:
        m, c = r["metrics"], r["compression"]
        rows.append(
            {
                "suite": r["suite"]["name"],
                "method": r["method"]["name"],
                "variant": r["method"]["variant"],
                "ratio (req)": requested_ratio(r["budget"]),
                "ratio (measured)": f"{c['ratio']:.2f}",
                "MACs ratio": f"{c['macs_ratio']:.2f}",
                "clean %": _pct(m.get("clean_eval_points", m["clean"])),
                "PGD %": _pct(m["pgd"]),
                "AutoAttack %": _pct(m["autoattack"]),
                "compute (AT-ep)": f"{r['compute']['used_epochs']:.2f}/{r['compute']['budget_epochs']:g}",
                "protocol": f"{r['protocol']['name']} n={m['autoattack']['n']}",
            }
        )
    # the cells are already text: tabulate would parse "16.0000001" and print it as "16"
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def record_diagnostics(path: str) -> dict:
    from pathlib import Path

    from rbench.report.validate import load_record_file
    from rbench.store.records import validate_record

    if Path(path).is_dir():
        raise RbenchError(f"record '{path}' is a folder; give one record file")
    if not Path(path).is_file():
        raise RbenchError(f"record '{path}' does not exist")
    record, problems = load_record_file(Path(path))
    if record is None:
        raise RbenchError(f"record '{path}' {problems[0]}")
    validate_record(record)
    if not record.get("diagnostics", {}).get("layers"):
        raise RbenchError(f"record '{path}' carries no spectral diagnostics; run it again")
    return record["diagnostics"]


def checkpoint_diagnostics(
    path: str, suite_name: str, data_root, points: int, normalization: str | None = None
) -> dict:
    from rbench.core.suites import get_suite
    from rbench.data.datasets import load_data
    from rbench.data.models import build_model
    from rbench.evaluate.spectral import diagnose
    from rbench.store.checkpoint import fit_checkpoint, load_state, read_checkpoint

    suite = get_suite(suite_name)
    info = suite.data
    model = build_model(suite.arch, info.input_shape, info.num_classes, info.mean, info.std)
    source = f"checkpoint '{path}'"
    state, _ = fit_checkpoint(read_checkpoint(path), model, normalization, source)
    load_state(model, state, source)
    x = None
    if points:
        try:
            test = load_data(suite.dataset, data_root).test
            x = test.head(suite.protocol().n_eval).head(points).images(slice(None))
        except RbenchError as exc:
            print(f"note: no local Lipschitz estimate ({exc})", file=sys.stderr)
    return diagnose(model.eval(), info.input_shape, x)


def diagnostics_table(diagnostics: dict) -> str:
    """The per-layer table `rbench diagnose` prints, then the network summary."""

    def num(v, fmt=".3g") -> str:
        return "inf" if v is None else format(v, fmt)

    rows = []
    for r in diagnostics.get("layers", []):
        op = r.get("operator", {})
        rows.append(
            {
                "layer": r["layer"],
                "type": r["type"],
                "shape": "x".join(map(str, r["shape"])) if r.get("shape") else "?",
                "stored": r["stored"],
                "density": num(r.get("density"), ".3f"),
                "sigma_max": num(r.get("sigma_max")),
                "sigma_min": num(r.get("sigma_min")),
                "cond": num(r.get("condition_number")),
                "cond (rank)": num(r.get("condition_number_rank")),
                "rank": r.get("numerical_rank", "?"),
                "stable rank": num(r.get("stable_rank")),
                "core cond": num(r["core"].get("condition_number")) if "core" in r else "",
                "op norm (FFT)": (num(op["sigma_max"]) + ("" if op["exact"] else " (bound)"))
                if op
                else "",
                "op norm (power)": num(op["power_iteration"]) if op else "",
            }
        )
    s = diagnostics.get("summary", {})
    lines = [tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)]
    lines.append(
        f"condition number: geometric mean {num(s.get('condition_number_geomean'))}, "
        f"max {num(s.get('condition_number_max'))}; log10 Lipschitz bound "
        f"{num(s.get('lipschitz_bound_log10'), '.3f')}"
        + ("" if s.get("lipschitz_bound_rigorous", True) else " (not rigorous: unknown modules)")
    )
    if "local_lipschitz" in s:
        loc = s["local_lipschitz"]
        lines.append(
            f"local Lipschitz on {loc['points']} test points: max {loc['max']:.3g}, "
            f"mean {loc['mean']:.3g} (l2 ball of radius {loc['radius']:g})"
        )
    return "\n".join(lines)


def methods_table() -> str:
    """`rbench list methods`."""
    from rbench.methods import load_methods

    rows = [
        {"method": m.name, "kind": m.kind, "variants": ",".join(m.variants), "what": m.summary()}
        for m in sorted(load_methods().values(), key=lambda m: m.name)
    ]
    return tabulate(rows, headers="keys", tablefmt="github")


def suites_table() -> str:
    """`rbench list suites`."""
    from rbench.core.suites import DEFAULT_SUITE, SUITES

    rows = []
    for s in SUITES.values():
        rows.append(
            {
                "suite": s.name + (" (default)" if s.name == DEFAULT_SUITE else ""),
                "data": s.dataset + ("" if s.data.embedded else " (--data-root)"),
                "arch": s.arch,
                "threat": str(s.threat),
                "dense recipe": f"{s.dense.epochs} ep PGD-{s.dense.attack.steps} {s.dense.optimizer}",
                "budget": f"{s.compress_epochs:g} AT-ep",
                "protocols": ", ".join(
                    f"{p.name}{'*' if p.name == s.default_protocol else ''} (n={p.n_eval})"
                    for p in s.protocols
                ),
            }
        )
    return tabulate(rows, headers="keys", tablefmt="github")
