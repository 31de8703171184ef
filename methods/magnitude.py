"""LWM: one-shot layer-wise magnitude pruning, then adversarial fine-tuning with the mask fixed.

The "LWM" baseline of HYDRA (Sehwag et al., NeurIPS 2020, section 6.3 of methods.md), in the style
of Sehwag et al. 2019: prune the adversarially trained dense model once to a uniform per-layer
density 1/B by |w|, then fine-tune the survivors with the suite's adversarial loss.

Algorithm (as implemented), from the suite's dense model:
1. prune once: every Conv2d/Linear keeps its largest |w| at a uniform density 1/B, exactly
   floor(N/B) weights in all (`rbench.layers.magnitude_masks`; `scope="global"`: one threshold
   over the whole network instead);
2. fine-tune the survivors with the variant's loss for the whole budget, the mask fixed
   (gradients masked, pruned weights re-zeroed after every step).

Paper defaults: fine-tune 100 epochs, SGD lr 0.01 cosine, momentum 0.9, wd 1e-4 (HYDRA code path).
Harness variant: the same recipe compressed into the harness budget (all of `budget.epochs`), at
the suite's fine-tuning rate (`Suite.finetune_lr`).
The "paper" variant keeps HYDRA's TRADES loss; the "harness" variant uses the suite's PGD-AT loss.
Same criterion as `lth-adv`, without rewinding or iteration: its natural control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rbench.core.budget import Budget
from rbench.core.registry import Method, SGDConfig, register_method
from rbench.layers import apply_masks, magnitude_masks, mask_gradients, reapply_masks
from rbench.train.trainer import StepHooks


@dataclass
class MagnitudeConfig(SGDConfig):
    variant: Literal["harness", "paper"] = "harness"
    scope: Literal["layer", "global"] = "layer"  # HYDRA's LWM: layer-wise uniform
    lr: float | None = None  # None: the suite's finetune_lr (harness), the paper's 0.01 (paper)


@register_method
class Magnitude(Method):
    """One-shot magnitude pruning + adversarial fine-tuning (LWM, the HYDRA paper's baseline)."""

    name = "magnitude"
    kind = "unstructured"
    citation = (
        "Sehwag, Wang, Mittal, Jana, HYDRA: Pruning Adversarially Robust Neural Networks, "
        "NeurIPS 2020 (LWM baseline)"
    )
    Config = MagnitudeConfig
    variants = ("harness", "paper")

    def check(self, model: nn.Module, budget: Budget) -> None:
        self.masks(model, budget.ratio, None)

    def masks(self, model: nn.Module, ratio: float, ctx) -> dict[str, torch.Tensor]:
        """Step 1: keep exactly floor(N / ratio) weights, the largest |w|."""
        return magnitude_masks(model, ratio, scope=self.config.scope)

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        cfg = self.config
        apply_masks(model, self.masks(model, budget.ratio, ctx))
        loss = "trades" if cfg.variant == "paper" else "adv"
        ctx.fit_sgd(
            model,
            cfg,
            epochs=ctx.affordable_epochs(loss=loss),
            lr=self.finetune_lr(ctx, cfg.lr, paper=0.01),
            loss=loss,
            hooks=StepHooks(after_backward=mask_gradients, after_step=reapply_masks),
            tag="adversarial fine-tuning",
        )
        return model
