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
from matplotlib.ticker import NullFormatter  # noqa: E402

DPI = 110
FLOOR = 1e-4  # spectra plots: values below this fraction of the panel's largest are clipped


def _label(row) -> str:
    return row["method"] if row["variant"] == "harness" else f"{row['method']} ({row['variant']})"


def _colours(labels) -> dict[str, tuple | str]:
    """A fixed colour per method label (sorted), the dense reference always black."""
    names = sorted(set(labels) - {"dense"})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {"dense": "black", **{n: cmap(i % cmap.N) for i, n in enumerate(names)}}


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


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def robust_vs_ratio(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Mean over seeds per method and ratio; the whiskers span the worst to the best seed."""
    table = table.assign(label=table.apply(_label, axis=1))
    colours = _colours(table["label"])
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for label, g in table.groupby("label"):
        g = g.sort_values("ratio")
        ax.errorbar(
            g["ratio"],
            g["autoattack"],
            yerr=[g["autoattack"] - g["autoattack_min"], g["autoattack_max"] - g["autoattack"]],
            marker="o",
            ms=5,
            capsize=3,
            lw=1.6,
            color=colours[label],
            label=label,
        )
    front = pareto_front(table)
    ax.step(
        front["ratio"],
        front["autoattack"],
        where="pre",
        color="black",
        lw=1,
        ls="--",
        alpha=0.6,
        zorder=1,
    )
    ax.scatter(
        front["ratio"],
        front["autoattack"],
        s=150,
        facecolors="none",
        edgecolors="black",
        lw=1.2,
        zorder=3,
        label="Pareto front",
    )
    ratios = sorted(table["ratio"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
    ax.minorticks_off()
    ax.set_xlabel("requested compression ratio (N_dense / N_stored)")
    ax.set_ylabel("AutoAttack robust accuracy (%)\nmean over seeds, whiskers: worst to best")
    ax.set_ylim(0, 101)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def clean_vs_robust(table: pd.DataFrame, path: Path, title: str) -> Path:
    """One line per method through its ratios (low to high), the end points labelled."""
    table = table.assign(label=table.apply(_label, axis=1))
    colours = _colours(table["label"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, g in table.groupby("label"):
        g = g.sort_values("ratio")
        ax.plot(
            g["clean"], g["autoattack"], marker="o", ms=5, lw=1.2, color=colours[label], label=label
        )
        for _, r in g.iloc[[0, -1]].drop_duplicates("ratio").iterrows():
            ax.annotate(
                f"×{r['ratio']:g}",
                (r["clean"], r["autoattack"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
                color=colours[label],
            )
    x0, x1 = table["clean"].min(), table["clean"].max()
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
    return _save(fig, path)


def _layers(diagnostics) -> list[dict]:
    """A record's per-layer spectra, keeping only well-formed entries (records are untrusted)."""
    rows = diagnostics.get("layers") if isinstance(diagnostics, dict) else None
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not (isinstance(r, dict) and isinstance(r.get("layer"), str)):
            continue
        values = r.get("singular_values") if isinstance(r.get("singular_values"), list) else []
        shape = r.get("shape") if isinstance(r.get("shape"), list) else None
        shape = shape if shape and all(isinstance(n, int) for n in shape[:6]) else None
        values = [float(v) for v in values if isinstance(v, (int, float)) and 0 <= v < math.inf]
        out.append(
            {"layer": r["layer"][:60], "shape": shape and shape[:6], "singular_values": values}
        )
    return out


def spectra(entries: list[tuple[str, list[dict]]], path: Path, title: str) -> Path | None:
    """One panel per layer: the sorted singular values of its weight matrix, one line per entry
    (label, layers from `_layers`); an entry labelled "dense" is the dashed reference."""
    layers = []
    for _, rows in entries:
        layers += [r["layer"] for r in rows if r["layer"] not in layers]
    if not layers:
        return None
    cols = min(5, len(layers))
    n_rows = math.ceil(len(layers) / cols)
    labels = {label for label, _ in entries}
    legend_height = 0.3 * math.ceil(len(labels) / 6) + 0.2
    height = 2.8 * n_rows + 0.7 + legend_height  # panels, the two-line title, the legend
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.3 * cols, height), squeeze=False)
    colours = _colours([label for label, _ in entries])
    for ax, layer in zip(axes.flat, layers, strict=False):
        rows_here = [next((r for r in rows if r["layer"] == layer), None) for _, rows in entries]
        top = max((max(r["singular_values"], default=0) for r in rows_here if r), default=0)
        floor = top * FLOOR  # numerically zero values are drawn on the panel's floor
        for (label, _), row in zip(entries, rows_here, strict=True):
            values = [max(v, floor) for v in (row["singular_values"] if row else [])]
            if not values:
                continue
            ax.plot(
                range(1, len(values) + 1),
                values,
                lw=1.4,
                color=colours[label],
                label=label,
                ls="--" if label == "dense" else "-",
            )
        shape = next(
            (r["shape"] for _, rows in entries for r in rows if r["layer"] == layer and r["shape"]),
            None,
        )
        ax.set_title(layer + (f"  {'x'.join(map(str, shape))}" if shape else ""), fontsize=8)
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if high > 30 * low:  # several decades: label the decades only
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(6, len(labels)),
        fontsize=8,
        bbox_to_anchor=(0.5, 0),
    )
    fig.suptitle(
        title + "\nsingular values of each layer's weight matrix (index 1 = largest; "
        f"values below {FLOOR:g} x the largest drawn at that floor)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, legend_height / height, 1, 1 - 0.1 / height))
    return _save(fig, path)


def group_plots(
    table: pd.DataFrame, records: list[dict], out_dir: Path, slug: str, title: str
) -> list[tuple[str, Path]]:
    """Every picture of one leaderboard table, as (alt text, path)."""
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
    # the lowest seed of each configuration stands for it; the dense model is the reference
    firsts: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        key = (r["method"]["name"], r["method"]["variant"], r["budget"]["ratio"])
        firsts.setdefault(key, r)
    dense = [("dense", _layers(r.get("diagnostics"))) for k, r in firsts.items() if k[0] == "dense"]
    for ratio in sorted({k[2] for k in firsts if k[2] > 1}):
        entries = dense[:1] + [
            (_label({"method": k[0], "variant": k[1]}), _layers(r.get("diagnostics")))
            for k, r in sorted(firsts.items())
            if k[2] == ratio and k[0] != "dense"
        ]
        path = spectra(
            entries, out_dir / f"{slug}-spectra-r{ratio:g}.png", f"{title} · ratio {ratio:g}"
        )
        if path is not None:
            images.append((f"spectra at ratio {ratio:g}", path))
    return images
