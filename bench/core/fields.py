"""One declaration per field: the range of every numeric method hyperparameter and run option,
checked by `rbench.core.registry.make_config` and `rbench.core.config.check_run_config` before any
compute is spent (never left to the optimiser, which would fail only after the dense model was
trained).

A field's type comes from its annotation (bool, int, float, a Literal of choices, a tuple of
numbers, `X | None`); its range from, in this order:

1. the dataclass field's metadata, `field(default=..., metadata={"range": "(0, 10]"})` (the way
   a new method or a plugin declares a field of its own);
2. `METHOD_RANGES[(method name, field name)]`, where one method's field means something else
   than the field of that name elsewhere;
3. `RANGES[field name]`, the shared vocabulary (lr, momentum, batch_size, phase lengths, ...).

A range is written in interval notation: "[0, 1)" includes 0 and excludes 1, "(0, inf)" is every
positive number; every number must also be finite. `tests/test_bad_input_catalogue.py` fails for
any numeric field of a registered method without a range, so no field is added unchecked.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from rbench.core.errors import RbenchError

_NOTATION = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; `None` bounds are open ends (still finite)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def of(cls, spec: str | Range) -> Range:
        if isinstance(spec, Range):
            return spec
        match = _NOTATION.match(spec)
        if match is None:
            raise ValueError(f"range '{spec}' is not interval notation such as '[0, 1)'")
        left, lo, hi, right = match.groups()
        low = None if lo in ("-inf", "inf") else float(lo)
        high = None if hi in ("inf", "+inf") else float(hi)
        return cls(low, high, left == "(", right == ")")

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        if self.high is None and self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None and self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        lo = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"in {lo}, {hi}"

    def outside(self) -> list[float]:
        """Values just outside the interval (for the bad-input tests)."""
        out = []
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high * 10 + 1)
        return out


LR, SHARE, PHASE = "(0, 10]", "[0, 1]", "(0, 1e6]"

# the shared vocabulary: a field of this name means the same in every method that has it
RANGES: dict[str, str] = {
    # optimisation
    "lr": LR,
    "prune_lr": LR,
    "finetune_lr": LR,
    "admm_lr": LR,
    "retrain_lr": LR,
    "score_lr": LR,
    "momentum": "[0, 1)",
    "weight_decay": "[0, 1]",
    "batch_size": "[1, 1e6]",
    "gamma": "[0, 1]",
    "milestones": "(0, 1]",  # each, as a fraction of the run
    # phase lengths in the paper's epochs (only their ratios survive the budget scaling)
    "prune_epochs": PHASE,
    "finetune_epochs": PHASE,
    "admm_epochs": PHASE,
    "admm_epoch": PHASE,
    "retrain_epochs": PHASE,
    "max_epochs": PHASE,
    # shares of the compute budget
    "admm_share": SHARE,
    "splice_share": SHARE,
    # ADMM
    "rho": "(0, 1e6]",
    "rho_growth": "[1, 100]",
    "admm_updates": "[1, 1e4]",
    # losses and regularisers
    "trades_beta": "[0, 1e3]",
    "lambda_s": "[0, 1e3]",
    "lambda_c": "[0, 1e3]",
    "nu_scale": "(0, 1e3]",
    "eps_scale": "(0, 1]",
    "tau": "(0, 1e3]",
    # pruning schedules
    "rate": "(0, 1)",
    "output_rate_factor": "[0, 1]",
    "c_rate": "[0, 100]",
    "power": "(0, 100]",
    "iter_stop": "[0, 1e9]",
    # decomposition
    "hooi_sweeps": "[0, 1e3]",
    "bn_batches": "[0, 1e4]",
}

# where one method's field of a shared name means something else
METHOD_RANGES: dict[tuple[str, str], str] = {
    ("orth-lowrank", "gamma"): "(0, 1]",  # MultiStepLR's decay factor; 0 would stop training
}


def field_range(method: str | None, field) -> Range | None:
    """The declared range of a dataclass field (see the module docstring), or None."""
    spec = field.metadata.get("range") if field.metadata else None
    if spec is None and method is not None:
        spec = METHOD_RANGES.get((method, field.name))
    if spec is None:
        spec = RANGES.get(field.name)
    return None if spec is None else Range.of(spec)


def check_number(value: float, allowed: Range | None, what: str, text: str | None = None) -> None:
    """Raise RbenchError (one sentence) when `value` is not finite or not in `allowed`."""
    shown = text if text is not None else repr(value)
    if not math.isfinite(value) or (allowed is not None and value not in allowed):
        rule = "" if allowed is None else f" {allowed}"
        raise RbenchError(f"{what} must be a finite number{rule}, got {shown}")
