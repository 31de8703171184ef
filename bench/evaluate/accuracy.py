"""The evaluation protocol (design.md 5): clean accuracy on the whole test split, PGD and
AutoAttack (pyautoattack, the real Croce & Hein code) on the first n_eval test points, Wilson
intervals, and sanity flags. Always eval mode and fp32; every forward pass batched, and on
out-of-memory the batch is halved and retried."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import torch
from torch import nn

from rbench.core.suites import AttackSpec, Protocol, ThreatModel
from rbench.data.splits import Split


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at k = 0 and k = n (the formula gives them only up to rounding)
    return (0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)


def accuracy_entry(correct: torch.Tensor, **extra) -> dict:
    k, n = int(correct.sum()), int(correct.numel())
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / max(n, 1), "correct": k, "n": n, "ci95": [lo, hi], **extra}


def chunk_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[(0, size), (size, 2 size), ...] covering n points."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def with_oom_retry(fn: Callable[[int], object], batch_size: int):
    """Call fn(batch_size), halving the batch on out-of-memory until it fits."""
    while True:
        try:
            return fn(batch_size)
        except RuntimeError as exc:
            if not _is_oom(exc) or batch_size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size //= 2


def _batched(
    model, split: Split, device, batch_size: int, per_batch, progress=None
) -> torch.Tensor:
    """per_batch(x, y) -> bool per point, over `split` in batches; `progress(done, correct)` after
    each batch (rbench.core.progress.points_reporter)."""

    def run(bs: int) -> torch.Tensor:
        out, correct = [], 0
        for start in range(0, len(split), bs):
            idx = slice(start, start + bs)
            x, y = split.images(idx).to(device), split.y[idx].to(device)
            out.append(per_batch(x, y).cpu())
            if progress is not None:
                correct += int(out[-1].sum())
                progress(min(start + bs, len(split)), correct)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    return with_oom_retry(run, batch_size)


@torch.no_grad()
def clean_correct(model: nn.Module, split: Split, device, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return _batched(model, split, device, batch_size, lambda x, y: model(x).argmax(1) == y)


def pgd_correct(
    model: nn.Module,
    split: Split,
    threat: ThreatModel,
    spec: AttackSpec,
    device,
    seed: int = 0,
    batch_size: int = 500,
    loss: str = "ce",
    progress=None,
) -> torch.Tensor:
    """Per point: still correct after every restart of PGD (worst case over restarts), with the
    cross-entropy (the protocol's PGD) or the margin loss (the masking cross-check).
    `progress(points attacked, robust so far)` after each batch."""
    model.eval()
    attack = spec.pgd(threat)
    gen = torch.Generator().manual_seed(seed)

    def per_batch(x, y):
        correct = model(x).argmax(1) == y
        for _ in range(spec.restarts):
            x_adv = attack.perturb(model, x, y, generator=gen, loss=loss)
            with torch.no_grad():
                correct &= model(x_adv).argmax(1) == y
        return correct

    return _batched(model, split, device, batch_size, per_batch, progress)


class _FlagHandler(logging.Handler):
    """Collects pyautoattack's warnings (its gradient-masking checks) as structured flags."""

    PATTERNS = {
        "randomized defense": "aa_randomized_defense",
        "probability distribution": "aa_softmax_output",
        "zero gradient": "aa_zero_gradients",
        "square attack has decreased": "aa_square_beats_whitebox",
        "dynamic defense": "aa_dynamic_model",
        "classes": "aa_n_classes",
    }

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.flags: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        lowered = message.lower()
        name = next((f for p, f in self.PATTERNS.items() if p in lowered), "aa_warning")
        message = " ".join(message.split())
        if name == "aa_zero_gradients" and name in self.flags:
            # checked once per APGD-DLR/targeted run: keep the largest count, not the last
            message = max(self.flags[name], message, key=_zero_gradient_count)
        self.flags[name] = message


def _reset_dynamic_check() -> None:
    """pyautoattack's dynamic-defence check counts the calls it traces in a module-level dict and
    never resets it, so one dynamic model would flag every later model of the same process as
    dynamic (aa_dynamic_model, unreliable): start each evaluation from zero."""
    from pyautoattack import checks

    for name in checks.funcs:
        checks.funcs[name] = 0


def autoattack_correct(
    model: nn.Module,
    split: Split,
    threat: ThreatModel,
    protocol: Protocol,
    device,
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, str]]:
    """Per-point robustness under AutoAttack via pyautoattack, and the flags its checks raised."""
    from pyautoattack import AutoAttack

    model.eval()
    logger = logging.getLogger("auto-attack")
    handler = _FlagHandler()
    logger.addHandler(handler)
    x, y = split.images(slice(None)).to(device), split.y.to(device)

    def run(bs: int) -> torch.Tensor:
        if protocol.autoattack == "custom":
            adversary = AutoAttack(
                model,
                attacks=list(protocol.attacks),
                device=device,
                eps=threat.eps_value,
                norm=threat.norm,
                seed=seed,
                version="custom",
            )
            if protocol.apgd_restarts is not None:
                adversary.apgd.n_restarts = protocol.apgd_restarts
        else:
            adversary = AutoAttack(
                model,
                device=device,
                eps=threat.eps_value,
                norm=threat.norm,
                seed=seed,
                version=protocol.autoattack,
            )
        _reset_dynamic_check()
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=bs)
        return (y_adv.to(y.device) == y).cpu()

    try:
        correct = with_oom_retry(run, batch_size or protocol.batch_size)
    finally:
        logger.removeHandler(handler)
    return correct, handler.flags


# pyautoattack's check names every evaluation with a point of zero gradient; such a point can
# overstate robust accuracy by at most 1/n, so below this share of the points (under one point of
# accuracy, less than the paired tests resolve) the flag is shown as `aa_zero_gradients_few` and
# does not make the record unreliable
ZERO_GRADIENT_SHARE = 0.01
_ZERO_GRADIENT_COUNT = re.compile(r"there are (\d+) points? with zero gradient")


def _zero_gradient_count(message: str) -> int:
    found = _ZERO_GRADIENT_COUNT.search(message)
    return int(found[1]) if found else -1


def merge_autoattack_flags(parts: list[dict[str, str]], n: int) -> dict[str, str]:
    """The flags of AutoAttack's chunks as one evaluation's: zero-gradient counts (pyautoattack
    checks them at the start of each APGD-DLR / targeted run, on the points still robust) add up
    over the chunks and are graded by their share of the n points (ZERO_GRADIENT_SHARE)."""
    flags: dict[str, str] = {}
    zero, unparsed = 0, None
    for name, message in (item for part in parts for item in part.items()):
        if name != "aa_zero_gradients":
            flags[name] = message
        elif (count := _zero_gradient_count(message)) < 0:
            unparsed = message  # no count to grade: kept as pyautoattack said it
        else:
            zero += count
    if unparsed is not None:
        flags["aa_zero_gradients"] = unparsed
    elif zero:
        share = zero / max(n, 1)
        text = (
            f"pyautoattack found {zero} of {n} points with zero gradient: gradient attacks cannot "
            f"start there, so robust accuracy may be overstated by up to {100 * share:.1f} points"
        )
        if share < ZERO_GRADIENT_SHARE:
            flags["aa_zero_gradients_few"] = (
                f"{text} (below {ZERO_GRADIENT_SHARE:.0%} of the points)"
            )
        else:
            flags["aa_zero_gradients"] = text
    return flags


def eps_monotonicity(
    model: nn.Module,
    split: Split,
    threat: ThreatModel,
    device,
    seed: int = 0,
    factors: tuple[float, ...] = (1.0, 2.0, 4.0),
) -> dict[str, float]:
    """PGD-10 accuracy at growing eps on a few points: it must not rise as eps grows."""
    out = {}
    for f in factors:
        eps = min(threat.eps_value * f, 1.0)
        scaled = ThreatModel(threat.norm, repr(eps))
        correct = pgd_correct(model, split, scaled, AttackSpec(10, 0.25), device, seed)
        out[f"{f:g}x"] = float(correct.float().mean())
    return out


def _significantly_more(
    a: torch.Tensor, b: torch.Tensor, alpha: float = 0.01
) -> tuple[int, int, bool]:
    """Points robust under `a` only, under `b` only, and whether the first count is significantly
    larger (exact one-sided binomial test on the points the two attacks disagree about)."""
    from scipy.stats import binomtest

    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a == 0:
        return only_a, only_b, False
    return (
        only_a,
        only_b,
        binomtest(only_a, only_a + only_b, 0.5, alternative="greater").pvalue < alpha,
    )


MASKING_GAP = 0.05  # a gap in robust accuracy this large (and significant) between two attacks
FLAT_SHARE = 0.8  # accuracy at 4 x eps above this share of that at eps: robustness flat in eps


def masking_flags(
    pgd: torch.Tensor, pgd_margin: torch.Tensor, aa: torch.Tensor, sweep: dict[str, float]
) -> dict[str, str]:
    """Symptoms of gradient masking that AutoAttack's own checks do not raise: PGD much weaker
    under cross-entropy than under the margin loss, or than AutoAttack (a PGD column that
    misleads), and robust accuracy that does not fall as eps grows to 4 x (design.md 5)."""
    flags, n = {}, max(len(pgd), 1)
    for name, other, label in (
        ("pgd_masked_by_loss", pgd_margin, "PGD with the margin loss"),
        ("pgd_far_above_autoattack", aa, "AutoAttack"),
    ):
        only_ce, only_other, significant = _significantly_more(pgd, other)
        if significant and (only_ce - only_other) / n >= MASKING_GAP:
            flags[name] = (
                f"PGD (cross-entropy) leaves {only_ce} points robust that {label} breaks, against "
                f"{only_other}: gradient masking; read AutoAttack, not PGD"
            )
    at_eps, at_4 = sweep.get("1x"), sweep.get("4x")
    if at_eps is not None and at_4 is not None and at_eps >= 0.1 and at_4 > FLAT_SHARE * at_eps:
        flags["accuracy_flat_in_eps"] = (
            f"PGD-10 accuracy {at_4:.3f} at 4 x eps against {at_eps:.3f} at eps: robustness that "
            "does not fall with eps is a sign of gradient masking"
        )
    return flags


def sanity_flags(clean_points: float, pgd: float, aa: float, sweep: dict[str, float]) -> dict:
    """design.md 5's checks on one evaluation (AutoAttack's own checks are added by the caller)."""
    flags = {}
    if pgd > clean_points or aa > clean_points:
        flags["robust_above_clean"] = (
            f"robust accuracy (PGD {pgd:.3f}, AutoAttack {aa:.3f}) exceeds clean {clean_points:.3f}"
        )
    if aa > pgd:
        flags["autoattack_above_pgd"] = f"AutoAttack {aa:.3f} is weaker than PGD {pgd:.3f}"
    values = list(sweep.values())
    if any(b > a + 0.02 for a, b in zip(values, values[1:], strict=False)):
        flags["accuracy_rises_with_eps"] = f"PGD accuracy by eps multiple: {sweep}"
    return flags


# flags that mean the robust accuracy cannot be trusted (gradient masking and its symptoms)
UNRELIABLE = {
    "aa_randomized_defense",
    "aa_softmax_output",
    "aa_zero_gradients",
    "aa_square_beats_whitebox",
    "aa_dynamic_model",
    "robust_above_clean",
    "accuracy_rises_with_eps",
    "accuracy_flat_in_eps",
}
# flags that say the PGD column misleads while AutoAttack (the ranking number) is not fooled:
# "pgd_masked_by_loss", "pgd_far_above_autoattack" (masking_flags)
