"""The leaderboard's tables as markdown: per table, the ranked main table (what a reader ranks
by) and a second table of spectra, compute and security-curve summaries.

Within each ratio the control row (`dense-ft`: the dense model fine-tuned with the methods'
budget) comes first; the other rows are ranked by the paired tests of rbench.report.paired, not
by point estimates: rank = 1 + the rows significantly better, "2=" when tied.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from rbench.report import paired
from rbench.report.rows import CONTROL, MARKS, REFERENCE

LEGEND = [
    "How to read a table:",
    "",
    "- One table per suite, threat model, evaluation protocol and compute budget; rows of "
    "different protocols or budgets are never ranked together.",
    "- **control** (`dense-ft`): the dense model adversarially fine-tuned with the budget and "
    "schedule every method gets, its rate chosen by the same tuning rule. Compression costs what "
    "a row loses against it.",
    "- **rank**: 1 + the number of rows the paired test finds significantly more robust "
    '("2=": several rows share rank 2). The test is the exact McNemar test on the evaluated '
    "points, each seed paired with the same seed of the other row on the same points and the "
    "seeds pooled, Holm-corrected over every pair of the ratio's rows (family-wise 5%).",
    "- **vs control**: the AutoAttack difference to the control on the seeds both rows have "
    "(the paired points; a row with fewer seeds than the control is compared on those), with "
    "its Holm-adjusted p; **p vs top**: the same test against the row with the highest mean.",
    "- Accuracies are means over seeds, in %; clean accuracy is on the evaluated points; "
    "AutoAttack carries the Wilson 95% interval of all seeds' points pooled.",
    "- Marks: **unreliable** (a gradient-masking check fired), **over budget**, **collapsed** "
    "(clean accuracy below 1.5 x chance), **diverged** (a training phase's loss became non-finite "
    'or ended at chance), each with how many seeds carry it ("1/3").',
]


def md(text) -> str:
    """Record text made safe for a markdown table cell."""
    return re.sub(r"[|<>\[\]`*\\\n\r]", " ", str(text)).strip()[:80]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value, spec: str = ".1f") -> str:
    if _missing(value):
        return "n/a"
    return format(value, spec)


def pm(mean, std, spec: str = ".1f") -> str:
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return fmt(mean, spec)
    return f"{fmt(mean, spec)} ± {fmt(std, spec)}"


def p_text(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def label(row) -> str:
    text = md(row["method"])
    return text if row["variant"] == "harness" else f"{text} ({md(row['variant'])})"


def marks(row) -> str:
    words = []
    for mark in MARKS:
        count = row[f"{mark}_seeds"]
        if count:
            word = f"**{mark.replace('_', ' ')}**"
            words.append(word if row["n_seeds"] == 1 else f"{word} {count}/{row['n_seeds']}")
    shown = sorted(f for f in row["flags"].split(",") if f and f not in set(MARKS) | {"unreliable"})
    return ", ".join(words + [md(f) for f in shown])


def ratio_block(rows: pd.DataFrame, control: pd.Series | None) -> tuple[list[dict], dict]:
    """The main-table rows of one ratio (control first) and the block's paired tests."""
    members = {label(r): r for _, r in rows.iterrows()}
    if control is not None:
        members["control"] = control
    tests = paired.compare_all({name: r["bits"] for name, r in members.items()})
    names = [n for n in members if n != "control"]
    ranks = paired.tie_ranks(names, tests)
    top = max(names, key=lambda n: members[n]["autoattack"]) if names else None
    out = []
    for name in (["control"] if control is not None else []) + sorted(
        names, key=lambda n: (int(ranks[n].rstrip("=")), -members[n]["autoattack"])
    ):
        r = members[name]
        vs_control = paired.lookup(tests, name, "control") if name != "control" else None
        vs_top = paired.lookup(tests, name, top) if name not in ("control", top) else None
        delta = (
            f"{paired.paired_difference(vs_control):+.1f} (p {p_text(vs_control['p_holm'])})"
            if vs_control is not None
            else ""
        )
        out.append(
            {
                "ratio": f"{r['ratio']:g}",
                "rank": "control" if name == "control" else ranks[name],
                "method": f"{label(r)}" if name != "control" else f"{label(r)} (control)",
                "clean %": pm(r["clean_points"], r["clean_points_std"]),
                "AutoAttack %": pm(r["autoattack"], r["autoattack_std"]),
                "95% CI": f"[{r['aa_ci_low']:.1f}, {r['aa_ci_high']:.1f}]",
                "vs control": delta,
                "p vs top": p_text(vs_top["p_holm"]) if vs_top is not None else "",
                "MACs ratio": fmt(r["macs_ratio"], ".2f"),
                "seeds": str(r["n_seeds"]),
                "flags": marks(r),
            }
        )
    return out, tests


def spectra_rows(table: pd.DataFrame) -> list[dict]:
    """The second table: what the ranking does not use, per row."""
    out = []
    for _, r in table.sort_values(["ratio", "method"]).iterrows():
        kappa, singular = fmt(r["cond_max"], ".3g"), r["singular_seeds"]
        if singular:  # a layer numerically rank-deficient: kappa is over its numerical rank
            kappa += (
                f" (singular in {singular} of {r['n_seeds']} seeds)"
                if r["n_seeds"] > 1
                else " (singular)"
            )
        out.append(
            {
                "ratio": f"{r['ratio']:g}",
                "method": label(r),
                "measured ratio": fmt(r["ratio_measured"], ".2f"),
                "κ geo-mean": fmt(r["cond_geomean"], ".3g"),
                "κ max": kappa,
                "log10 Lip. bound": fmt(r["lipschitz_log10"], ".2f"),
                "median min. ‖δ‖ (FMN)": fmt(r["median_norm"], ".3f"),
                "curve area %": fmt(r["curve_area"]),
                "PGD %": pm(r["pgd"], r["pgd_std"]),
                "worst seed AA %": fmt(r["autoattack_min"]) if r["n_seeds"] > 1 else "",
                "compute (AT-ep)": f"{fmt(r['compute_used'], '.2f')} / {r['budget_epochs']:g}",
                "tuned rate": "" if _missing(r["tuned_rate"]) else fmt(r["tuned_rate"], "g"),
            }
        )
    return out


def references_line(table: pd.DataFrame) -> str:
    """The two reference models of a table, in one line."""
    parts = []
    for name, what in ((REFERENCE, "dense model"), (CONTROL, "control (dense + the budget)")):
        rows = table[(table["method"] == name) & (table["ratio"] == 1)]
        for _, r in rows.iterrows():
            parts.append(
                f"{what}: clean {pm(r['clean_points'], r['clean_points_std'])}%, AutoAttack "
                f"{pm(r['autoattack'], r['autoattack_std'])}% ({r['n_seeds']} seeds)"
            )
    return "; ".join(parts) + "." if parts else ""
