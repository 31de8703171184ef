"""What every leaderboard picture shares: the Agg backend, the resolution, a fixed colour per
method label (the references in black), and the atomic-enough save (a new file per name)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110
FLOOR = 1e-4  # spectra plots: values below this fraction of the panel's largest are clipped


def label_of(row) -> str:
    return row["method"] if row["variant"] == "harness" else f"{row['method']} ({row['variant']})"


def colours(labels) -> dict[str, tuple | str]:
    """A fixed colour per method label (sorted), the dense reference always black."""
    names = sorted(set(labels) - {"dense"})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {"dense": "black", **{n: cmap(i % cmap.N) for i, n in enumerate(names)}}


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
