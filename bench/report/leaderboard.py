"""The leaderboard (design.md 8): records in, LEADERBOARD.md + CSV + JSON + PNG plots out.

Records are untrusted data: each is parsed as JSON and checked against the record schema; one that
fails is skipped and reported in one line, never rendered. Rows group into one table per (suite,
suite version, threat model, protocol), where the protocol is the record's whole protocol (name,
n_eval, PGD and AutoAttack settings) plus the pyautoattack version: rows of different protocols
never share a ranking. Seeds of one configuration (method, variant, requested ratio, non-default
hyperparameters, compute budget) collapse into one row, mean +- std (sample std); its AutoAttack
interval is the record's Wilson 95% interval, or for several seeds the Wilson interval of the
pooled points. Within each requested ratio rows are ranked by mean AutoAttack accuracy (ties: clean
accuracy). A record repeated (same run id) or superseded (same configuration and seed, older) is
skipped and reported.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.evaluate.accuracy import wilson_interval
from rbench.store.cache import atomic_write_json, atomic_write_text, content_hash
from rbench.store.records import validate_record

ENTRIES = Path("leaderboard/entries")
MAX_RECORD_BYTES = 16 << 20  # far above any real record (ResNet-18 diagnostics: 60 kB of JSON)
GROUP = ["suite", "suite_version", "threat", "protocol_key"]
CONFIG = ["method", "variant", "ratio", "config", "budget_epochs"]
METRICS = ["ratio_measured", "macs_ratio", "clean", "pgd", "autoattack"]
METRICS += ["cond_geomean", "cond_max", "singular_layers", "lipschitz_log10", "compute_used"]


@dataclass
class Loaded:
    records: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why", one line each


def load_records(dirs: list[Path]) -> Loaded:
    """Every *.json under `dirs` that parses and passes the record schema."""
    out, seen = Loaded(), {}
    for root in dirs:
        if not Path(root).is_dir():
            raise RbenchError(
                f"records folder '{root}' does not exist (pass --records DIR; --local reads results/)"
            )
        for path in sorted(Path(root).rglob("*.json")):
            try:
                if path.stat().st_size > MAX_RECORD_BYTES:
                    raise RbenchError(f"larger than {MAX_RECORD_BYTES >> 20} MiB")
                record = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(record, dict):
                    raise RbenchError("not a JSON object")
                validate_record(record)
                row = record_row(record)
            except (OSError, UnicodeDecodeError, ValueError, RbenchError) as exc:
                out.skipped.append(f"{path}: {' '.join(str(exc).split())[:200]}")
                continue
            except (KeyError, TypeError, AttributeError) as exc:
                out.skipped.append(f"{path}: malformed field ({type(exc).__name__}: {exc})"[:240])
                continue
            if record["run_id"] in seen:
                out.skipped.append(f"{path}: duplicate of {seen[record['run_id']]}")
                continue
            seen[record["run_id"]] = path
            record["_path"], record["_row"] = str(path), row
            out.records.append(record)
    return out


def _number(value, name: str) -> float | None:
    """A finite float, None for null, anything else is a malformed record."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RbenchError(f"{name} is not a finite number: {value!r}")
    return float(value)


def _variant(method: dict) -> str:
    """The variant, with any option overrides ("harness, structure=filter"): rows that differ
    only in options must not read alike."""
    options = method.get("config_nondefault") or {}
    if not isinstance(options, dict):
        raise TypeError("method.config_nondefault is not an object")
    return ", ".join([str(method["variant"])] + [f"{k}={options[k]}" for k in sorted(options)])


MARKS = ("unreliable", "over_budget", "collapsed")  # shown in bold, with their seed counts
COLLAPSE = 1.5  # clean accuracy below this multiple of chance: the model no longer classifies


def _classes(suite: str) -> int | None:
    """Classes of a registered suite (None for a suite this installation does not know)."""
    try:
        return get_suite(suite).data.num_classes
    except RbenchError:
        return None


def record_row(r: dict) -> dict:
    """The flat row one record contributes (before seeds are aggregated)."""
    m, summary = r["metrics"], (r.get("diagnostics") or {}).get("summary") or {}
    threat, protocol = r["suite"]["threat"], r["protocol"]
    used, budget = _number(r["compute"]["used_epochs"], "compute"), r["budget"]["epochs"]
    return {
        "suite": r["suite"]["name"],
        "suite_version": r["suite"]["version"],
        "threat": f"{threat['norm']} eps={threat['eps']}",
        "protocol": str(protocol["name"]),
        "n_eval": int(protocol["n_eval"]),
        "protocol_key": content_hash(
            {**protocol, "batch_size": None, "aa": r["environment"]["pyautoattack"]}, 8
        ),  # the batch size changes no result
        "method": r["method"]["name"],
        "variant": _variant(r["method"]),
        "ratio": float(r["budget"]["ratio"]),
        "config": content_hash(r["method"].get("config_nondefault") or {}, 8),
        "budget_epochs": float(budget),
        "seed": r["seed"],
        "created": str(r["created"]),
        "run_id": r["run_id"],
        "ratio_measured": _number(r["compression"]["ratio"], "measured ratio"),
        "macs_ratio": _number(r["compression"]["macs_ratio"], "MACs ratio"),
        **{k: 100 * m[k]["accuracy"] for k in ("clean", "pgd", "autoattack")},
        "aa_correct": m["autoattack"]["correct"],
        "aa_n": m["autoattack"]["n"],
        "aa_ci_low": 100 * _number(m["autoattack"]["ci95"][0], "interval"),
        "aa_ci_high": 100 * _number(m["autoattack"]["ci95"][1], "interval"),
        "cond_geomean": _number(summary.get("condition_number_rank_geomean"), "condition number"),
        "cond_max": _number(summary.get("condition_number_rank_max"), "condition number"),
        "singular_layers": _number(summary.get("rank_deficient_layers"), "rank-deficient layers"),
        "lipschitz_log10": _number(summary.get("lipschitz_bound_log10"), "Lipschitz bound"),
        "compute_used": used,
        "unreliable": bool(r["unreliable"]),
        "over_budget": used > budget * (1 + 1e-6),
        "collapsed": (classes := _classes(r["suite"]["name"])) is not None
        and m["clean"]["accuracy"] < COLLAPSE / classes,
        "flags": ",".join(sorted(r["flags"])),
    }


def aggregate(records: list[dict], skipped: list[str]) -> pd.DataFrame:
    """One row per configuration: seeds collapsed to mean and std, ranked within ratio."""
    rows = pd.DataFrame([r["_row"] for r in records])
    if rows.empty:
        return rows
    rows = rows.sort_values("created")
    newest = rows.drop_duplicates(CONFIG + GROUP + ["seed"], keep="last")
    for run_id in sorted(set(rows["run_id"]) - set(newest["run_id"])):
        path = next(r["_path"] for r in records if r["run_id"] == run_id)
        skipped.append(f"{path}: superseded by a newer record of the same configuration and seed")
    out = []
    for _, g in newest.groupby(GROUP + CONFIG, sort=False, dropna=False):
        row = g.iloc[0][GROUP + CONFIG + ["protocol", "n_eval"]].to_dict()
        for k in METRICS:
            values = g[k].dropna()
            row[k] = values.mean() if len(values) else None
            row[f"{k}_std"] = values.std() if len(values) > 1 else None
        # one collapsed seed makes a wide std; the plots show the worst and best seed instead
        row["autoattack_min"], row["autoattack_max"] = g["autoattack"].min(), g["autoattack"].max()
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"]))
        row["n_seeds"] = len(g)
        if len(g) == 1:
            row["aa_ci_low"], row["aa_ci_high"] = g["aa_ci_low"].iloc[0], g["aa_ci_high"].iloc[0]
        else:  # the Wilson interval of all points of all seeds
            lo, hi = wilson_interval(int(g["aa_correct"].sum()), int(g["aa_n"].sum()))
            row["aa_ci_low"], row["aa_ci_high"] = 100 * lo, 100 * hi
        for mark in MARKS:  # how many seeds carry it; the row carries it if any seed does
            row[f"{mark}_seeds"] = int(g[mark].sum())
            row[mark] = row[f"{mark}_seeds"] > 0
        row["flags"] = ",".join(sorted({f for fs in g["flags"] for f in fs.split(",") if f}))
        out.append(row)
    table = pd.DataFrame(out).sort_values(
        GROUP + ["ratio", "autoattack", "clean"], ascending=[True] * 5 + [False, False]
    )
    table["rank"] = table.groupby(GROUP + ["ratio"]).cumcount() + 1
    return table.reset_index(drop=True)


# ------------------------------------------------------------------------------ rendering


def _md(text) -> str:
    """Record text made safe for a markdown table cell."""
    return re.sub(r"[|<>\[\]`*\\\n\r]", " ", str(text)).strip()[:80]


def _pm(mean, std, fmt: str = ".1f") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def _singular(count) -> str:
    if count is None or math.isnan(count) or count == 0:
        return ""
    return f" ({count:.3g} singular)"


def _compute(row) -> str:
    return f"{_pm(row['compute_used'], None, '.2f')} / {row['budget_epochs']:g}"


def _cell_flags(row) -> str:
    """Bold marks first, each with how many of the seeds carry it; then the records' flags."""
    words = []
    for mark in MARKS:
        count = row[f"{mark}_seeds"]
        if count:
            word = f"**{mark.replace('_', ' ')}**"
            words.append(
                word if row["n_seeds"] == 1 else f"{word} ({count} of {row['n_seeds']} seeds)"
            )
    shown = [f for f in row["flags"].split(",") if f and f not in {"unreliable"}]
    return ", ".join(words + [_md(f) for f in shown])


def markdown_rows(table: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in table.iterrows():
        kappa_max = _pm(r["cond_max"], None, ".3g") + _singular(r["singular_layers"])
        rows.append(
            {
                "ratio": f"{r['ratio']:g}",
                "rank": r["rank"],
                "method": _md(r["method"]),
                "variant": _md(r["variant"]),
                "measured ratio": _pm(r["ratio_measured"], None, ".2f"),
                "MACs ratio": _pm(r["macs_ratio"], None, ".2f"),
                "clean %": _pm(r["clean"], r["clean_std"]),
                "PGD %": _pm(r["pgd"], r["pgd_std"]),
                "AutoAttack %": _pm(r["autoattack"], r["autoattack_std"]),
                "AA 95% CI": f"[{r['aa_ci_low']:.1f}, {r['aa_ci_high']:.1f}]",
                "AA worst seed %": f"{r['autoattack_min']:.1f}" if r["n_seeds"] > 1 else "",
                "seeds": r["n_seeds"],
                "κ geo-mean": _pm(r["cond_geomean"], None, ".3g"),
                "κ max": kappa_max,
                "log10 Lip. bound": _pm(r["lipschitz_log10"], None, ".2f"),
                "compute (AT-ep)": _compute(r),
                "flags": _cell_flags(r),
            }
        )
    if all(r["AA worst seed %"] == "" for r in rows):  # a table of single-seed rows
        for r in rows:
            del r["AA worst seed %"]
    return rows


def _title(key: tuple, g: pd.DataFrame) -> str:
    protocol, n_eval = g["protocol"].iloc[0], g["n_eval"].iloc[0]
    return f"{key[0]} v{key[1]} · {key[2]} · protocol {protocol}, n={n_eval}"


def _protocol_line(record: dict, count: int) -> str:
    p, env = record["protocol"], record["environment"]
    pgd = p.get("pgd") or {}
    attacks = f"AutoAttack {_md(p['autoattack'])}"
    if p.get("attacks"):
        attacks += f" ({_md(', '.join(map(str, p['attacks'])))})"
    return (
        f"Robust accuracy on the first {p['n_eval']} test points: "
        f"PGD-{pgd.get('steps', '?')} x {pgd.get('restarts', '?')} restart(s); {attacks}; "
        f"pyautoattack {_md(env['pyautoattack'])}. {count} records."
    )


def _slug(key: tuple) -> str:
    suite, version, _, protocol_key = key
    return re.sub(r"[^a-z0-9_.-]", "_", f"{suite}-v{version}-{protocol_key}".lower())


LEGEND = (
    "One table per suite, threat model and evaluation protocol: rows of different protocols are "
    "never ranked together. Within each requested compression ratio, rows are ranked by AutoAttack "
    "robust accuracy. Several seeds of one configuration show mean ± std (AA 95% CI: Wilson "
    "interval, pooled over the seeds' points) and the worst seed's AutoAttack accuracy. κ: "
    "condition number of each layer's weight matrix "
    'over its numerical rank (geometric mean and max over layers; "k singular": k layers are '
    "numerically rank-deficient, their full-spectrum κ infinite). log10 Lip. bound: the product of "
    "layer operator norms, an upper bound of the network's l2 Lipschitz constant. compute: "
    "AT-epochs used / allowed. **unreliable**: a gradient-masking check fired, so the robust "
    "accuracy is not trusted; **over budget**: more compute than allowed; **collapsed**: clean "
    "accuracy below 1.5 x chance: the model no longer classifies (its training diverged or "
    "never took off), a real result, not a failed measurement."
)


def render(loaded: Loaded, out_dir: Path, sources: list[Path], plots: bool = True) -> Path:
    """Write LEADERBOARD.md, leaderboard.csv, leaderboard.json and plots/*.png under `out_dir`
    (earlier PNGs in plots/ are removed first, so none outlives its table)."""
    out_dir = Path(out_dir)
    table = aggregate(loaded.records, loaded.skipped)
    if plots:
        for old in (out_dir / "plots").glob("*.png"):
            old.unlink()
    where = ", ".join(f"`{_md(d)}`" for d in sources)
    made = f"Generated by `rbench leaderboard` from the records in {where}; do not edit by hand"
    lines = ["# rbench leaderboard", "", made + " (regenerate: `make leaderboard`).", "", LEGEND]
    parts = [(key, g) for key, g in table.groupby(GROUP, sort=False)] if len(table) else []
    parts.sort(key=lambda kg: (*kg[0][:3], kg[1]["protocol"].iloc[0] != "standard", kg[0][3]))
    titles = [_title(key, g) for key, g in parts]
    groups = []
    for (key, g), title in zip(parts, titles, strict=True):
        if titles.count(title) > 1:  # same name, different settings: say which
            title += f" [{key[3]}]"
        members = [r for r in loaded.records if tuple(r["_row"][k] for k in GROUP) == key]
        lines += _section(title, g, members, out_dir / "plots", _slug(key) if plots else None)
        groups.append(
            {
                "key": dict(zip(GROUP, map(str, key), strict=True)),
                "title": title,
                "protocol": members[0]["protocol"],
                "rows": json.loads(g.to_json(orient="records")),
            }
        )
    if not groups:
        lines += ["", "No records yet."]
    if loaded.skipped:
        lines += [
            "",
            f"{len(loaded.skipped)} record(s) were skipped; `rbench leaderboard` says why.",
        ]
    md = out_dir / "LEADERBOARD.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "leaderboard.csv", table.to_csv(index=False))
    document = {"schema": "rbench.leaderboard/1", "groups": groups, "skipped": loaded.skipped}
    atomic_write_json(out_dir / "leaderboard.json", document)
    return md


def _section(title: str, table: pd.DataFrame, records: list[dict], plot_dir: Path, slug) -> list:
    """One table's markdown: heading, protocol, rows, then its plots (unless `slug` is None)."""
    from rbench.report import plots

    lines = ["", f"## {_md(title)}", "", _protocol_line(records[0], len(records)), ""]
    lines.append(
        tabulate(markdown_rows(table), headers="keys", tablefmt="github", disable_numparse=True)
    )
    if slug is not None:
        images = plots.group_plots(table, records, plot_dir, slug, title)
        lines += ["", " ".join(f"![{alt}](plots/{p.name})" for alt, p in images)]
    return lines


def build(dirs: list[Path], out_dir: Path, plots: bool = True) -> tuple[Path, Loaded]:
    """Read the records under `dirs` and render the leaderboard into `out_dir`."""
    loaded = load_records(dirs)
    return render(loaded, out_dir, dirs, plots), loaded
