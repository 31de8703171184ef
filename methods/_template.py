"""TEMPLATE: copy to `methods/<your_method>.py` and replace every "TEMPLATE" note (see
CONTRIBUTING.md). As shipped, this file is a complete, working method: global magnitude pruning
followed by adversarial fine-tuning. The registry skips files whose names start with "_", so this
one is never listed; your copy, without the underscore, is.

Global magnitude pruning with adversarial fine-tuning.
TEMPLATE: one line saying what the method does, then the full citation:
Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks",
NeurIPS 2015 (global magnitude threshold + retraining).

Algorithm (TEMPLATE: the paper's algorithm box, step by step, in the paper's words):
1. score every weight of every Conv2d/Linear by |w|;
2. keep the floor(N/ratio) largest scores over the whole network (one global threshold), so the
   harness measures exactly the requested ratio;
3. fine-tune the survivors with the suite's adversarial loss for the whole compute budget, masks
   fixed (gradients masked, pruned weights re-zeroed after every step).

Paper defaults (TEMPLATE: the paper's own numbers, in the Config below): SGD, lr 0.01, momentum
0.9, weight decay 1e-4.
Variants: "harness" fine-tunes with the suite's PGD-AT loss at the harness budget; "paper" keeps
the paper's natural (cross-entropy) retraining, for checking the paper's own numbers.
Budget: the harness budget replaces the paper's retraining schedule (TEMPLATE: say how).
Deviations: TEMPLATE: everything that differs from the paper and why.
UNVERIFIED: TEMPLATE: every choice the paper does not pin down (methods.md marks them).
Measured: TEMPLATE: no measurements here. Put them, with the command and the machine, under
"### <your method id>" in docs/findings.md ("Measurements behind the method files"); here at
most one short sentence per decision they support, pointing there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rbench.core.budget import Budget, compressible_layers
from rbench.core.errors import RbenchError
from rbench.core.registry import Method, SGDConfig, register_method
from rbench.layers import apply_masks, magnitude_masks, mask_gradients, reapply_masks
from rbench.train.trainer import StepHooks


@dataclass
class TemplateConfig(SGDConfig):
    """The paper's defaults; every field becomes an `--opt key=value` override. SGDConfig brings
    momentum, weight_decay and batch_size (override a default by naming the field again)."""

    variant: Literal["harness", "paper"] = "harness"
    lr: float | None = None  # None: the suite's finetune_lr (harness), the paper's (paper)


@register_method
class TemplateMethod(Method):
    """Global magnitude pruning + adversarial fine-tuning (TEMPLATE: one line for `rbench list`)."""

    name = "template"  # TEMPLATE: the id users type, lowercase with dashes, e.g. "my-method"
    kind = "unstructured"  # one of: dense, unstructured, structured, low-rank
    citation = (
        "Han, Pool, Tran, Dally, Learning both Weights and Connections for Efficient Neural "
        "Networks, NeurIPS 2015"
    )
    Config = TemplateConfig
    variants = ("harness", "paper")

    def check(self, model: nn.Module, budget: Budget) -> None:
        # refuse an unreachable ratio before any compute is spent
        n_dense = sum(m.weight.numel() for m in compressible_layers(model).values())
        if math.floor(n_dense / budget.ratio) < 1:
            raise RbenchError(
                f"ratio {budget.ratio:g} keeps none of this model's {n_dense} weights"
            )

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        masks = score_and_select(model, budget.ratio)
        apply_masks(model, masks)
        fine_tune(model, self.config, ctx, lr=self.finetune_lr(ctx, self.config.lr, paper=0.01))
        ctx.report["layer_density"] = {
            path: float(mask.float().mean()) for path, mask in masks.items()
        }
        return model


def score_and_select(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """Steps 1-2: |w| scores, one global threshold keeping floor(N/ratio) weights."""
    return magnitude_masks(model, ratio, scope="global")


def fine_tune(model: nn.Module, cfg: TemplateConfig, ctx, lr: float) -> None:
    """Step 3: train the survivors through ctx (so the compute is metered), masks fixed."""
    loss = "ce" if cfg.variant == "paper" else "adv"
    ctx.fit_sgd(
        model,
        cfg,
        epochs=ctx.affordable_epochs(loss=loss),
        lr=lr,
        loss=loss,
        hooks=StepHooks(after_backward=mask_gradients, after_step=reapply_masks),
        tag="fine-tuning",
    )
