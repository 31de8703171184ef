"""Score-masked layers: each weight gets a learnable importance score, the forward pass uses
`W .* m(|s|)` with m = 1 on the k largest |s| of the layer, and the gradient reaches the scores
straight through the top-k (edge-popup, Ramanujan et al. CVPR 2020; HYDRA, Sehwag et al.
NeurIPS 2020).

The mask is a `torch.nn.utils.parametrize` parametrisation of `weight`, so the ordinary forward of
Conv2d/Linear uses it and `rbench.layers.finalize` bakes it into a plain tensor. Typical use:

    attach_scores(model, counts)          # counts: {layer path: weights kept}
    freeze_weights(model)                 # only the scores (and norm layers) train
    ctx.fit(model, ...)                   # scores learn under the robust loss
    scores_to_masks(model)                # fixed torch.nn.utils.prune masks from here on
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from rbench.layers import apply_masks, top_k_mask


class _TopKStraightThrough(torch.autograd.Function):
    """Forward: the 0/1 mask of the k largest entries. Backward: the identity."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        return top_k_mask(scores, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ScoreMask(nn.Module):
    """Parametrisation `W -> W .* m(|s|)` keeping the `k` weights of largest |score|."""

    def __init__(self, scores: torch.Tensor, k: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores.detach().clone())
        self.k = int(k)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopKStraightThrough.apply(self.scores.abs(), self.k)

    def mask(self) -> torch.Tensor:
        return top_k_mask(self.scores.detach().abs(), self.k)


def scaled_score_init(weight: torch.Tensor) -> torch.Tensor:
    """HYDRA's "scaled score init": sqrt(6 / fan_in) * W / max|W|, so the initial top-k of the
    scores is the magnitude mask (fan_in = weight.numel() / out_features)."""
    w = weight.detach()
    fan_in = w[0].numel()
    return math.sqrt(6.0 / fan_in) * w / w.abs().max().clamp_min(1e-12)


def _score_layers(model: nn.Module) -> dict[str, tuple[nn.Module, ScoreMask]]:
    found = {}
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, ScoreMask):
                    found[path] = (module, p)
    return found


def attach_scores(
    model: nn.Module,
    counts: dict[str, int],
    init: Callable[[torch.Tensor], torch.Tensor] = scaled_score_init,
) -> nn.Module:
    """Give each named layer a score tensor (initialised by `init(weight)`) and mask its weight to
    the `counts[path]` entries of largest |score|."""
    modules = dict(model.named_modules())
    for path, k in counts.items():
        module = modules[path]
        parametrize.register_parametrization(module, "weight", ScoreMask(init(module.weight), k))
    return model


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p.scores for _, p in _score_layers(model).values()]


def freeze_weights(model: nn.Module, frozen: bool = True) -> None:
    """(Un)freeze the weights and biases of the score-masked layers; their scores stay trainable."""
    for module, _ in _score_layers(model).values():
        module.parametrizations.weight.original.requires_grad_(not frozen)
        if getattr(module, "bias", None) is not None:
            module.bias.requires_grad_(not frozen)


def score_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current top-k mask of every score-masked layer, by layer path."""
    return {path: p.mask() for path, (_, p) in _score_layers(model).items()}


def scores_to_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Freeze the scores: replace each score parametrisation by the fixed pruning mask it selects
    now (torch.nn.utils.prune, so `mask_gradients` / `reapply_masks` keep it). Weights and biases
    become trainable again. Returns the masks."""
    masks = score_masks(model)
    for module, _ in _score_layers(model).values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        module.weight.requires_grad_(True)
        if getattr(module, "bias", None) is not None:
            module.bias.requires_grad_(True)
    apply_masks(model, masks)
    return masks
