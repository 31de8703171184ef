"""The leaderboard (design.md 8, 8b): records in, LEADERBOARD.md + CSV + JSON + PNG plots out.

Records are untrusted data: each is parsed as plain JSON (no NaN/Infinity, no duplicate keys,
bounded size and nesting: rbench.report.validate) and checked against the record schema; one that
fails is skipped and reported in one line, never rendered, and never displaces a good record.
Rows are built and aggregated over seeds in rbench.report.rows, ranked by paired tests in
rbench.report.paired and written as markdown by rbench.report.markdown. Tables at the suite's
own compute budget are the ranked ones; rows at other budgets (the compute axis, and tracks such
as lth-adv at its paper's compute) appear in a section of their own, never ranked with them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.report import html, markdown
from rbench.report.rows import CONTROL, GROUP, aggregate, record_row
from rbench.report.validate import load_record_file
from rbench.store.cache import atomic_write_json, atomic_write_text
from rbench.store.records import dense_models_by_stage, validate_record

ENTRIES = Path("leaderboard/entries")
DROP = ["bits", "curve_eps", "curve_mean"]  # per-point data: in the records, not in the CSV


@dataclass
class Loaded:
    records: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why", one line each


def load_records(dirs: list[Path]) -> Loaded:
    """Every *.json under `dirs` that parses as safe JSON and passes the record schema."""
    out, seen = Loaded(), {}
    for root in dirs:
        if not Path(root).is_dir():
            raise RbenchError(
                f"records folder '{root}' does not exist (pass --records DIR; --local reads results/)"
            )
        for path in sorted(Path(root).rglob("*.json")):
            record, problems = load_record_file(path)
            try:
                if problems:
                    raise RbenchError(problems[0])
                validate_record(record)
                row = record_row(record)
            except (ValueError, RbenchError) as exc:
                out.skipped.append(f"{path}: {' '.join(str(exc).split())[:200]}")
                continue
            except (KeyError, TypeError, AttributeError, IndexError) as exc:
                out.skipped.append(f"{path}: malformed field ({type(exc).__name__}: {exc})"[:240])
                continue
            if record["run_id"] in seen:
                out.skipped.append(f"{path}: duplicate of {seen[record['run_id']]}")
                continue
            seen[record["run_id"]] = path
            record["_path"], record["_row"] = str(path), row
            out.records.append(record)
    _skip_mixed_dense_models(out)
    return out


def _skip_mixed_dense_models(out: Loaded) -> None:
    """Within one dense stage keep only the records of its most common dense model.

    The board pairs every entry of a seed with that seed's control, so all of them must have
    compressed one set of dense weights (`rbench validate` rejects the mix outright). A record
    whose dense model differs from the stage's majority is skipped, so one stray file cannot
    knock the committed records out; a tie leaves no majority and skips the whole stage.
    """
    by_stage = dense_models_by_stage((record, record) for record in out.records)
    dropped: set[int] = set()
    for stage, by_hash in by_stage.items():
        sizes = sorted((len(rs) for rs in by_hash.values()), reverse=True)
        tie = len(sizes) > 1 and sizes[0] == sizes[1]
        for digest, records in by_hash.items():
            if len(records) == sizes[0] and not tie:
                continue
            for record in records:
                dropped.add(id(record))
                out.skipped.append(
                    f"{record['_path']}: dense model {digest[:12]} is not the one most records of"
                    f" dense stage {stage} compressed; pairing it with them would mix dense models"
                )
    out.records = [r for r in out.records if id(r) not in dropped]


def _default_budget(suite: str) -> float | None:
    try:
        return float(get_suite(suite).compress_epochs)
    except RbenchError:
        return None


def _slug(suite: str, version, protocol: str, n_eval, budget: float) -> str:
    text = f"{suite}-v{version}-{protocol}-n{n_eval}-{budget:g}ep"
    return re.sub(r"[^a-z0-9_.-]", "_", text.lower())


def _protocol_line(record: dict, count: int) -> str:
    p, env = record["protocol"], record["environment"]
    pgd = p.get("pgd") or {}
    attacks = f"AutoAttack {markdown.md(p['autoattack'])}"
    ran = record["metrics"]["autoattack"].get("attacks") or p.get("attacks")
    if ran:
        attacks += f" ({markdown.md(', '.join(map(str, ran)))})"
    curve = record["metrics"]["security_curve"]
    return (
        f"Robust accuracy on the first {p['n_eval']} test points: PGD-{pgd.get('steps', '?')} x "
        f"{pgd.get('restarts', '?')} restart(s); {attacks}; pyautoattack "
        f"{markdown.md(env['pyautoattack'])}; security curve: {markdown.md(curve['attack'])}, "
        f"{curve.get('steps', '?')} steps. {count} records."
    )


def _table(rows: list[dict]) -> str:
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def _ranked_section(key, g: pd.DataFrame, members: list[dict], plot_dir, slug) -> tuple[list, dict]:
    """One ranked table (the suite's budget): references, the main table, the second table."""
    from rbench.report import plots

    title = (
        f"{key[0]} v{key[1]} · {key[2]} · protocol {g['protocol'].iloc[0]}, "
        f"n={g['n_eval'].iloc[0]} · budget {key[4]:g} AT-epochs"
    )
    lines = ["", f"## {markdown.md(title)}", "", _protocol_line(members[0], len(members))]
    refs = markdown.references_line(g)
    lines += ["", refs] if refs else []
    controls = g[(g["method"] == CONTROL) & (g["ratio"] == 1)]
    control = controls.iloc[0] if len(controls) else None
    main, blocks = [], {}
    for ratio, rows in g[g["ratio"] > 1].groupby("ratio"):
        block, tests = markdown.ratio_block(rows, control)
        main += block
        blocks[ratio] = {"rows": block, "tests": len(tests)}
    if main:
        lines += ["", _table(main)]
    lines += ["", "Spectra, compute and security curves:", "", _table(markdown.spectra_rows(g))]
    images = []
    if slug is not None:
        images = plots.group_plots(g, members, plot_dir, slug, title)
        lines += ["", " ".join(f"![{alt}](plots/{p.name})" for alt, p in images)]
    return lines, {"title": title, "main": main, "plots": [p.name for _, p in images]}


def _budget_section(parts: list, everything: pd.DataFrame, plot_dir, plots_on: bool) -> list[str]:
    """Rows at budgets other than the suite's: the compute axis, unranked."""
    from rbench.report import plots

    if not parts:
        return []
    lines = [
        "",
        "## Compute axis",
        "",
        "The same configurations at other compute budgets (AT-epochs), and tracks such as a "
        "method at its paper's compute. Not ranked with the tables above.",
    ]
    table = pd.concat([g for _, g in parts])
    rows = [
        {
            "suite": markdown.md(r["suite"]),
            "ratio": f"{r['ratio']:g}",
            "budget (AT-ep)": f"{r['budget_epochs']:g}",
            "method": markdown.label(r),
            "clean %": markdown.pm(r["clean_points"], r["clean_points_std"]),
            "AutoAttack %": markdown.pm(r["autoattack"], r["autoattack_std"]),
            "seeds": str(r["n_seeds"]),
            "flags": markdown.marks(r),
        }
        for _, r in table.sort_values(["suite", "ratio", "method", "budget_epochs"]).iterrows()
    ]
    lines += ["", _table(rows)]
    if plots_on:
        # every budget of the same suite, protocol and ratio, the suite's own included
        keys = set(zip(table["suite"], table["suite_version"], table["protocol_key"], strict=True))
        same = everything[
            [
                k in keys
                for k in zip(
                    everything["suite"],
                    everything["suite_version"],
                    everything["protocol_key"],
                    strict=True,
                )
            ]
        ]
        ratios = set(table["ratio"]) - {1.0}
        images = plots.compute_axis(same[same["ratio"].isin(ratios | {1.0})], plot_dir)
        lines += ["", " ".join(f"![{alt}](plots/{p.name})" for alt, p in images)]
    return lines


def render(loaded: Loaded, out_dir: Path, sources: list[Path], plots: bool = True) -> Path:
    """Write LEADERBOARD.md, leaderboard.csv, leaderboard.json and plots/*.png under `out_dir`
    (earlier PNGs in plots/ are removed first, so none outlives its table)."""
    out_dir = Path(out_dir)
    table = aggregate(loaded.records, loaded.skipped)
    if plots:
        for old in (out_dir / "plots").glob("*.png"):
            old.unlink()
    where = ", ".join(f"`{markdown.md(d)}`" for d in sources)
    made = f"Generated by `rbench leaderboard` from the records in {where}; do not edit by hand"
    lines = ["# rbench leaderboard", "", made + " (regenerate: `make leaderboard`).", ""]
    lines += markdown.LEGEND
    parts = [(key, g) for key, g in table.groupby(GROUP, sort=False)] if len(table) else []
    parts.sort(key=lambda kg: (*kg[0][:3], kg[1]["protocol"].iloc[0] != "standard", kg[0][3:]))
    ranked = [(k, g) for k, g in parts if _default_budget(k[0]) in (None, k[4])]
    other = [(k, g) for k, g in parts if _default_budget(k[0]) not in (None, k[4])]
    groups = []
    for key, g in ranked:
        members = [r for r in loaded.records if tuple(r["_row"][k] for k in GROUP) == key]
        slug = _slug(key[0], key[1], g["protocol"].iloc[0], g["n_eval"].iloc[0], key[4])
        if (
            sum(
                1
                for k, h in ranked
                if _slug(k[0], k[1], h["protocol"].iloc[0], h["n_eval"].iloc[0], k[4]) == slug
            )
            > 1
        ):
            slug += f"-{key[3]}"  # same name, different settings
        section, doc = _ranked_section(key, g, members, out_dir / "plots", slug if plots else None)
        lines += section
        groups.append({"key": dict(zip(GROUP, map(str, key), strict=True)), **doc})
    lines += _budget_section(other, table, out_dir / "plots", plots)
    if not groups and not other:
        lines += ["", "No records yet."]
    if loaded.skipped:
        lines += [
            "",
            f"{len(loaded.skipped)} record(s) were skipped; `rbench leaderboard` says why.",
        ]
    md_path = out_dir / "LEADERBOARD.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    flat = table.drop(columns=[c for c in DROP if c in table.columns])
    atomic_write_text(out_dir / "leaderboard.csv", flat.to_csv(index=False))
    document = {
        "schema": "rbench.leaderboard/2",
        "groups": groups,
        "rows": json.loads(flat.to_json(orient="records")),
        "skipped": loaded.skipped,
    }
    atomic_write_json(out_dir / "leaderboard.json", document)
    html.write_page(document, out_dir)  # index.html beside it (rbench.report.html)
    return md_path


def build(dirs: list[Path], out_dir: Path, plots: bool = True) -> tuple[Path, Loaded]:
    """Read the records under `dirs` and render the leaderboard into `out_dir`."""
    loaded = load_records(dirs)
    return render(loaded, out_dir, dirs, plots), loaded
