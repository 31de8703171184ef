"""The leaderboard's spectra pictures: the singular values of every layer's weight matrix,
method beside method, one picture per ratio (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from rbench.report.figures import FLOOR, colours, save  # noqa: E402


def layers_of(diagnostics) -> list[dict]:
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
    palette = colours([label for label, _ in entries])
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
                color=palette[label],
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
    return save(fig, path)
