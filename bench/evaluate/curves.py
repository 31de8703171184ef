"""Security curves: robust accuracy as a function of eps, from a minimum-norm attack.

For every evaluation point, foolbox's FMN (Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm
Adversarial Attacks through Adaptive Norm Constraints", NeurIPS 2021) finds a small perturbation,
in the threat model's norm, that changes the prediction. A point counts as robust at eps when it
is classified correctly and FMN needed more than eps; the curve is that fraction on a grid from 0
to `span` x the suite's eps. A minimum-norm attack is weaker than AutoAttack at any one eps, so the
curve at the suite's eps is cross-checked against AutoAttack's per-point result: when FMN leaves
significantly more points robust than AutoAttack does, the record is flagged and the curve is an
upper bound, not an estimate.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import binomtest
from torch import nn

from rbench.core.errors import RbenchError
from rbench.core.suites import ThreatModel
from rbench.data.splits import Split

FMN_STEPS = 100
GRID_POINTS = 21  # eps = 0, span/20 x eps, ..., span x eps
SPAN = 2.0
NORMS = {"Linf": "LInfFMNAttack", "L2": "L2FMNAttack", "L1": "L1FMNAttack"}


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(1)
    return flat.norm(p=2 if norm == "L2" else 1, dim=1)


def minimal_perturbations(
    model: nn.Module,
    split: Split,
    threat: ThreatModel,
    device,
    steps: int = FMN_STEPS,
    batch_size: int = 250,
    progress=None,
) -> torch.Tensor:
    """Per point: the norm of the smallest adversarial perturbation FMN found; 0 for a point the
    model already misclassifies, inf where FMN found none. `progress(points attacked, robust at
    the threat's eps so far)` after each batch."""
    import foolbox as fb

    if threat.norm not in NORMS:
        raise RbenchError(f"no minimum-norm attack for the norm '{threat.norm}'")
    model.eval()
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
    attack = getattr(fb.attacks, NORMS[threat.norm])(steps=steps)
    out = []
    for start in range(0, len(split), batch_size):
        x = split.images(slice(start, start + batch_size)).to(device)
        y = split.y[start : start + batch_size].to(device)
        with torch.no_grad():
            wrong = model(x).argmax(1) != y
        _, adv, success = attack(fmodel, x, y, epsilons=None)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        norms = _distance(adv - x, threat.norm)
        norms = torch.where(success & fooled, norms, torch.full_like(norms, math.inf))
        out.append(torch.where(wrong, torch.zeros_like(norms), norms).cpu())
        if progress is not None:
            done = torch.cat(out)
            progress(len(done), int((done > threat.eps_value).sum()))
    return torch.cat(out) if out else torch.zeros(0)


def curve_from_norms(norms: torch.Tensor, eps: float, span: float = SPAN) -> dict:
    """The security curve on the grid, its mean over the grid (the normalised area under it) and
    the median minimal perturbation."""
    grid = [eps * span * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    accuracy = [float((norms > e).float().mean()) for e in grid]
    median = float(norms.median()) if len(norms) else math.nan
    return {
        "eps": [round(e, 6) for e in grid],
        "accuracy": [round(a, 6) for a in accuracy],
        "area": round(sum(accuracy) / len(accuracy), 6),
        "median_norm": None if not math.isfinite(median) else round(median, 6),
    }


def curve_entry(norms: torch.Tensor, threat: ThreatModel, steps: int = FMN_STEPS) -> dict:
    """The record's `security_curve`: the attack, the curve, and every point's minimal norm (null
    where FMN found no adversarial example)."""
    return {
        "attack": f"foolbox {NORMS[threat.norm]}",
        "steps": steps,
        "n": len(norms),
        **curve_from_norms(norms, threat.eps_value),
        "norms": [None if not math.isfinite(v) else round(v, 6) for v in norms.tolist()],
    }


def above_autoattack(
    norms: torch.Tensor, autoattack: torch.Tensor, eps: float, alpha: float = 0.05
) -> str | None:
    """A flag message when the curve at eps lies above AutoAttack by more than noise: an exact
    one-sided binomial test on the points the two disagree about."""
    fmn = norms > eps
    only_fmn = int((fmn & ~autoattack.bool()).sum())
    only_aa = int((~fmn & autoattack.bool()).sum())
    if only_fmn == 0:
        return None
    p = binomtest(only_fmn, only_fmn + only_aa, 0.5, alternative="greater").pvalue
    if p >= alpha:
        return None
    return (
        f"the minimum-norm curve at eps leaves {only_fmn} points robust that AutoAttack breaks "
        f"(against {only_aa}; p = {p:.2g}): the curve is an upper bound"
    )
