"""Masks: `torch.nn.utils.prune` masks on Conv2d/Linear weights and the counts they keep.

The mask is a buffer and the forward uses `weight_orig * mask`, so gradients of pruned entries are
zero. `reapply_masks` re-zeroes the raw weights after an optimiser step so momentum and weight decay
cannot revive them (methods.md 0.3, pitfall 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from rbench.core.budget import compressible_layers
from rbench.core.errors import RbenchError


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Mask the named layers' weights in place (replacing any earlier mask)."""
    modules = dict(model.named_modules())
    for path, mask in masks.items():
        module = modules[path]
        if prune.is_pruned(module):
            prune.remove(module, "weight")
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device, torch.bool))
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {p: m.weight_mask for p, m in model.named_modules() if hasattr(m, "weight_mask")}


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Zero the raw weights under each mask (after an optimiser step)."""
    for m in model.modules():
        if hasattr(m, "weight_mask") and hasattr(m, "weight_orig"):
            m.weight_orig.mul_(m.weight_mask)


def mask_gradients(model: nn.Module) -> None:
    for m in model.modules():
        grad = getattr(getattr(m, "weight_orig", None), "grad", None)
        if hasattr(m, "weight_mask") and grad is not None:
            grad.mul_(m.weight_mask)


def keep_counts(
    sizes: dict[str, int],
    ratio: float,
    dense: Iterable[str] = (),
    scale: dict | None = None,
    exact: bool = False,
) -> dict[str, int]:
    """Surviving weights per layer for a layer-wise (uniform density) mask at `ratio`.

    Layers in `dense` are kept whole and paid for first; the rest share what is left of
    floor(N/ratio) in proportion to their size (times an optional per-layer `scale`, e.g. 0.5
    for a layer pruned at half rate). The total never exceeds floor(N/ratio); with `exact` the
    rounding remainder goes, one weight each, to the layers with the largest fractional shares,
    so the total is floor(N/ratio) exactly (where the layers have room)."""
    dense = set(dense)
    budget = math.floor(sum(sizes.values()) / ratio) - sum(sizes[p] for p in dense)
    pruned = {p: n * (scale or {}).get(p, 1.0) for p, n in sizes.items() if p not in dense}
    weight_total = sum(pruned.values())
    if budget < len(pruned) or weight_total == 0:
        raise RbenchError(
            f"ratio {ratio:g} cannot be reached: the layers kept dense already use the budget"
        )
    counts = {
        p: min(sizes[p], max(1, math.floor(budget * w / weight_total))) for p, w in pruned.items()
    }
    if exact:
        by_fraction = sorted(pruned, key=lambda p: -((budget * pruned[p] / weight_total) % 1))
        left = budget - sum(counts.values())
        while left > 0 and any(counts[p] < sizes[p] for p in pruned):
            for p in by_fraction:
                if left > 0 and counts[p] < sizes[p]:
                    counts[p] += 1
                    left -= 1
    counts.update({p: sizes[p] for p in dense})
    return counts


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A mask keeping exactly the k largest scores (ties broken by position)."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


def magnitude_masks(
    model: nn.Module,
    ratio: float,
    *,
    scope: str = "layer",
    dense: Iterable[str] = (),
    score: Callable[[nn.Module], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks keeping the largest |w| (or `score(module)`): per layer at a uniform density
    ("layer"), or by one global threshold ("global"). Exactly floor(N/ratio) weights survive."""
    layers = compressible_layers(model)
    score = score or (lambda m: m.weight.detach().abs())
    dense = set(dense)
    if scope == "layer":
        sizes = {p: m.weight.numel() for p, m in layers.items()}
        counts = keep_counts(sizes, ratio, dense, exact=True)  # exactly floor(N / ratio)
        return {p: top_k_mask(score(m), counts[p]) for p, m in layers.items()}
    if scope != "global":
        raise RbenchError(f"unknown pruning scope '{scope}' (choose layer or global)")
    sizes = {p: m.weight.numel() for p, m in layers.items()}
    budget = math.floor(sum(sizes.values()) / ratio) - sum(sizes[p] for p in dense)
    pruned = [p for p in layers if p not in dense]
    flat = torch.cat([score(layers[p]).flatten() for p in pruned])
    keep = top_k_mask(flat, max(budget, 0))
    masks, start = {}, 0
    for p in pruned:
        n = sizes[p]
        masks[p] = keep[start : start + n].view_as(layers[p].weight)
        start += n
    masks.update({p: torch.ones_like(layers[p].weight, dtype=torch.bool) for p in dense})
    return masks
