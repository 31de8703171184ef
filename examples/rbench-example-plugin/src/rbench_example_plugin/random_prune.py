"""Random pruning with adversarial fine-tuning: the random baseline of ShrinkBench (Blalock,
Gonzalez Ortiz, Frankle, Guttag, "What is the State of Neural Network Pruning?", MLSys 2020).

Algorithm:
1. per layer, keep a uniformly random subset of the weights; layer sizes share floor(N/ratio)
   in proportion to their size (`rbench.layers.keep_counts(exact=True)`), so the harness
   measures exactly the requested ratio;
2. fine-tune the survivors with the suite's adversarial loss for the whole compute budget, masks
   fixed.
The mask depends only on the run's seed (`ctx.generator`), not on the weights: a method that
does not beat this is not using the weights' information.

Registered through the `rbench.methods` entry point of this package's pyproject.toml; it uses
only rbench's public method interface (registry, layers, train, and the ctx it is handed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rbench.core.budget import Budget, compressible_layers
from rbench.core.registry import Method, MethodConfig
from rbench.layers import apply_masks, keep_counts, mask_gradients, reapply_masks, top_k_mask
from rbench.train.trainer import StepHooks


@dataclass
class RandomPruneConfig(MethodConfig):
    variant: Literal["harness"] = "harness"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4


class RandomPrune(Method):
    """Random unstructured pruning + adversarial fine-tuning (an out-of-tree example plugin)."""

    name = "example-random"
    kind = "unstructured"
    citation = (
        "Blalock, Gonzalez Ortiz, Frankle, Guttag, What is the State of Neural Network Pruning?, "
        "MLSys 2020 (random pruning baseline)"
    )
    Config = RandomPruneConfig

    def check(self, model: nn.Module, budget: Budget) -> None:
        layer_budget(model, budget.ratio)  # raises RbenchError when the ratio is out of reach

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        masks = random_masks(model, budget.ratio, ctx.generator("random-masks"))
        apply_masks(model, masks)
        cfg = self.config
        ctx.fit(
            model,
            epochs=ctx.affordable_epochs(loss="adv"),
            lr=cfg.lr,
            optimizer="sgd",
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            loss="adv",
            hooks=StepHooks(after_backward=mask_gradients, after_step=reapply_masks),
            tag="adversarial fine-tuning",
        )
        return model


def layer_budget(model: nn.Module, ratio: float) -> dict[str, int]:
    sizes = {p: m.weight.numel() for p, m in compressible_layers(model).items()}
    return keep_counts(sizes, ratio, exact=True)


def random_masks(
    model: nn.Module, ratio: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Step 1: for each layer, its share of floor(N/ratio) weights, chosen uniformly at random."""
    counts = layer_budget(model, ratio)
    masks = {}
    for path, module in compressible_layers(model).items():
        scores = torch.rand(module.weight.shape, generator=generator)
        masks[path] = top_k_mask(scores, counts[path])
    return masks
