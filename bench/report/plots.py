"""The leaderboard's pictures (matplotlib, Agg backend, PNG): robust accuracy against compression
ratio with the Pareto front marked, clean against robust accuracy, and the singular-value spectra
of every layer, method beside method. One set per leaderboard table."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from rbench.report.figures import colours, label_of, save  # noqa: E402
from rbench.report.spectra_plots import layers_of, spectra  # noqa: E402


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on both ratio and AutoAttack accuracy (ties kept). Drawn as the
    staircase bounding what is reached: at ratio x, the best accuracy of a row at ratio >= x."""
    keep = []
    for i, r in table.iterrows():
        beaten = (
            (table["ratio"] >= r["ratio"])
            & (table["autoattack"] >= r["autoattack"])
            & ((table["ratio"] > r["ratio"]) | (table["autoattack"] > r["autoattack"]))
        )
        if not beaten.any():
            keep.append(i)
    return table.loc[keep].sort_values("ratio")


REFERENCES = {"dense-ft": ("control: dense-ft", "-"), "dense": ("dense (no fine-tuning)", ":")}


def _on_grid(g: pd.DataFrame, grid: list[float], column: str) -> list[float]:
    """A column on the full grid of ratios, NaN where the row has no entry: a line never joins
    two ratios across a missing one."""
    by_ratio = dict(zip(g["ratio"], g[column], strict=True))
    return [by_ratio.get(r, math.nan) for r in grid]


def references(ax, table: pd.DataFrame, column: str = "autoattack") -> None:
    """The ratio-1 reference rows as horizontal lines across the plot."""
    for method, (text, style) in REFERENCES.items():
        rows = table[(table["method"] == method) & (table["ratio"] == 1)]
        if len(rows):
            ax.axhline(rows[column].iloc[0], color="black", lw=1.2, ls=style, label=text, zorder=2)


def robust_vs_ratio(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Mean over seeds per method and ratio; the whiskers span the worst to the best seed; the
    control and the dense model are horizontal reference lines."""
    compressed = table[table["ratio"] > 1]
    compressed = compressed.assign(label=compressed.apply(label_of, axis=1))
    palette = colours(compressed["label"])
    grid = sorted(compressed["ratio"].unique())
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    references(ax, table)
    for label, g in compressed.groupby("label"):
        y = _on_grid(g, grid, "autoattack")
        low = [a - b for a, b in zip(y, _on_grid(g, grid, "autoattack_min"), strict=True)]
        high = [b - a for a, b in zip(y, _on_grid(g, grid, "autoattack_max"), strict=True)]
        ax.errorbar(
            grid,
            y,
            yerr=[low, high],
            marker="o",
            ms=5,
            capsize=3,
            lw=1.6,
            color=palette[label],
            label=label,
        )
    if len(compressed):
        front = pareto_front(compressed)
        ax.step(
            front["ratio"],
            front["autoattack"],
            where="pre",
            color="grey",
            lw=1,
            ls="--",
            alpha=0.6,
            zorder=1,
            label="Pareto front",
        )
    if grid:
        ax.set_xscale("log", base=2)
        ax.set_xticks(grid, [f"{r:g}" for r in grid])
    ax.minorticks_off()
    ax.set_xlabel("requested compression ratio (N_dense / N_stored)")
    ax.set_ylabel("AutoAttack robust accuracy (%)\nmean over seeds, whiskers: worst to best")
    ax.set_ylim(0, 101)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save(fig, path)


def clean_vs_robust(table: pd.DataFrame, path: Path, title: str) -> Path:
    """One line per method through its ratios (low to high), the end points labelled."""
    table = table.assign(label=table.apply(label_of, axis=1))
    palette = colours(table["label"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, g in table.groupby("label"):
        g = g.sort_values("ratio")
        ax.plot(
            g["clean_points"],
            g["autoattack"],
            marker="o",
            ms=5,
            lw=1.2,
            color=palette[label],
            label=label,
        )
        for _, r in g.iloc[[0, -1]].drop_duplicates("ratio").iterrows():
            ax.annotate(
                f"×{r['ratio']:g}",
                (r["clean_points"], r["autoattack"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
                color=palette[label],
            )
    x0, x1 = table["clean_points"].min(), table["clean_points"].max()
    y0, y1 = table["autoattack"].min(), table["autoattack"].max()
    pad_x, pad_y = max(1.0, 0.08 * (x1 - x0)), max(1.0, 0.08 * (y1 - y0))
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls=":", label="robust = clean")
    ax.set_xlim(x0 - pad_x, min(100.5, x1 + pad_x))
    ax.set_ylim(y0 - pad_y, min(100.5, y1 + pad_y))
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack robust accuracy (%), mean over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save(fig, path)


def security_curves(table: pd.DataFrame, ratio: float, path: Path, title: str) -> Path:
    """Robust accuracy against eps from the minimum-norm attack, mean over seeds, for the rows
    at one ratio and the control; the suite's eps is the dotted vertical line."""
    rows = table[
        (table["ratio"] == ratio) | ((table["method"] == "dense-ft") & (table["ratio"] == 1))
    ]
    rows = rows.assign(label=rows.apply(label_of, axis=1))
    palette = colours(rows["label"])
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for _, r in rows.iterrows():
        control = r["method"] == "dense-ft"
        ax.plot(
            r["curve_eps"],
            [100 * a for a in r["curve_mean"]],
            color="black" if control else palette[r["label"]],
            lw=1.8 if control else 1.3,
            label=f"{r['label']} (control)" if control else r["label"],
        )
    if len(rows):
        eps = rows["curve_eps"].iloc[0]
        ax.axvline(eps[len(eps) // 2], color="grey", ls=":", lw=1, label="the suite's eps")
    ax.set_xlabel("eps (the threat model's norm)")
    ax.set_ylabel("robust accuracy (%), minimum-norm attack\nmean over seeds")
    ax.set_ylim(0, 101)
    ax.set_title(f"{title} · ratio {ratio:g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save(fig, path)


def compute_axis(table: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """AutoAttack accuracy against the compute budget, one picture per suite and ratio, one line
    per method (the control at ratio 1 in black)."""
    images = []
    for (suite, version, ratio), g in table[table["ratio"] > 1].groupby(
        ["suite", "suite_version", "ratio"]
    ):
        rows = pd.concat([g, table[(table["suite"] == suite) & (table["method"] == "dense-ft")]])
        rows = rows.assign(label=rows.apply(label_of, axis=1))
        palette = colours(rows["label"])
        fig, ax = plt.subplots(figsize=(7.0, 4.4))
        for label, h in rows.groupby("label"):
            h = h.sort_values("budget_epochs")
            control = h["method"].iloc[0] == "dense-ft"
            ax.errorbar(
                h["budget_epochs"],
                h["autoattack"],
                yerr=[h["autoattack"] - h["autoattack_min"], h["autoattack_max"] - h["autoattack"]],
                marker="o",
                ms=5,
                capsize=3,
                lw=1.8 if control else 1.3,
                color="black" if control else palette[label],
                label=f"{label} (control, ratio 1)" if control else label,
            )
        ax.set_xscale("log")
        budgets = sorted(rows["budget_epochs"].unique())
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("compute budget (AT-epochs)")
        ax.set_ylabel("AutoAttack robust accuracy (%)\nmean over seeds, whiskers: worst to best")
        ax.set_ylim(0, 101)
        ax.set_title(
            f"{suite} v{version} · ratio {ratio:g}: robust accuracy against compute", fontsize=10
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        name = f"{suite}-v{version}-compute-axis-r{ratio:g}.png".lower()
        images.append(
            (f"robust accuracy against compute at ratio {ratio:g}", save(fig, out_dir / name))
        )
    return images


def group_plots(
    table: pd.DataFrame, records: list[dict], out_dir: Path, slug: str, title: str
) -> list[tuple[str, Path]]:
    """Every picture of one leaderboard table, as (alt text, path), named by what it shows."""
    images = [
        (
            "robust accuracy vs ratio",
            robust_vs_ratio(table, out_dir / f"{slug}-robust-vs-ratio.png", title),
        ),
        (
            "clean vs robust accuracy",
            clean_vs_robust(table, out_dir / f"{slug}-clean-vs-robust.png", title),
        ),
    ]
    for ratio in sorted(r for r in table["ratio"].unique() if r > 1):
        path = out_dir / f"{slug}-security-curves-r{ratio:g}.png"
        images.append(
            (f"security curves at ratio {ratio:g}", security_curves(table, ratio, path, title))
        )
    # the lowest seed of each configuration stands for it; the dense model is the reference
    firsts: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        firsts.setdefault((r["method"]["name"], r["method"]["variant"], r["budget"]["ratio"]), r)
    dense = [
        ("dense", layers_of(r.get("diagnostics"))) for k, r in firsts.items() if k[0] == "dense"
    ]
    for ratio in sorted({k[2] for k in firsts if k[2] > 1}):
        entries = dense[:1] + [
            (label_of({"method": k[0], "variant": k[1]}), layers_of(r.get("diagnostics")))
            for k, r in sorted(firsts.items())
            if k[2] == ratio and k[0] not in ("dense", "dense-ft")
        ]
        path = spectra(
            entries, out_dir / f"{slug}-spectra-r{ratio:g}.png", f"{title} · ratio {ratio:g}"
        )
        if path is not None:
            images.append((f"spectra at ratio {ratio:g}", path))
    return images
