"""The one progress display of rbench: tqdm bars on stderr for every step a person waits on (dense
training, each compression phase, each attack of the evaluation), and the epoch counter.

A bar is live only on a terminal (tqdm's `disable=None`: silent when stderr is a log file, a pipe
or CI) and never under `-q`. Bars go to stderr, so stdout keeps only what a command prints as its
result (`--json` relies on it), and vanish when done (`leave=False`): the log lines between them
stay readable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def bar(
    desc: str, total: int | None = None, *, unit: str = "it", quiet: bool = False, iterable=None
):
    """A tqdm bar on stderr: live on a terminal, silent elsewhere and under `quiet`."""
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=True if quiet else None,
    )


def note(message: str) -> None:
    """A log line on stderr that does not break a live bar (tqdm.write clears and redraws it)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def points_reporter(shown) -> Callable[[int, int], None]:
    """A callback `(points attacked so far, points still robust)` that moves `shown`. It sets the
    count rather than adding to it, so an attack that restarts (a smaller batch after running out
    of memory) does not count its points twice."""

    def report(done: int, robust: int) -> None:
        shown.n = done
        shown.set_postfix_str(f"robust {robust}/{done} ({100 * robust / max(done, 1):.1f}%)")

    return report


def _short(value: float) -> str:
    return f"{round(value, 2):g}"


def epoch_counter(epoch: int, total: float) -> str:
    """Where training stands after epoch `epoch` (0-based) of `total`, which may be fractional:
    whole epochs, then the fraction of the last one, never beyond the total ("1/2.49",
    "2/2.49", "2.49/2.49"; "3/5" for a whole total)."""
    done = min(epoch + 1, total)
    return f"{_short(done)}/{_short(total)}"


def epochs_text(total: float) -> str:
    """A number of epochs as people read it: "5", "2.49"."""
    return _short(total)
