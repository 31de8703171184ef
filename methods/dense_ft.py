"""The equal-compute control: the dense model adversarially fine-tuned with exactly what every
compression method is given, and nothing removed.

Every compressed entry gets the suite's compression budget (5 AT-epochs on mnist5k) of
adversarial training on top of the dense model; the dense model alone never had it. A compressed
row that beats `dense` may only show the value of the extra training. `dense-ft` spends the same
budget with the same loss (PGD-AT at the suite's training attack), optimiser (SGD, momentum 0.9,
weight decay 1e-4), schedule (cosine over the phase), batch size and fine-tuning rate (the
suite's, or the tuned one) as `magnitude`, at ratio 1: "compression costs X" is read against this
row (design.md 8b).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from rbench.core.budget import Budget
from rbench.core.errors import RbenchError
from rbench.core.registry import Method, SGDConfig, register_method


@dataclass
class DenseFTConfig(SGDConfig):
    variant: Literal["harness"] = "harness"
    lr: float | None = None  # None: the suite's finetune_lr


@register_method
class DenseFineTuned(Method):
    """The equal-compute control: the dense model + the methods' adversarial fine-tuning budget."""

    name = "dense-ft"
    kind = "dense"
    citation = (
        "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018 "
        "(PGD-AT, continued for the compression budget)"
    )
    Config = DenseFTConfig

    def check(self, model: nn.Module, budget: Budget) -> None:
        if budget.ratio != 1:
            raise RbenchError("'dense-ft' is the ratio-1 control; run it with --ratio 1")

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        cfg = self.config
        ctx.fit_sgd(
            model,
            cfg,
            epochs=ctx.affordable_epochs(loss="adv"),
            lr=self.finetune_lr(ctx, cfg.lr, paper=0.01),
            loss="adv",
            tag="adversarial fine-tuning",
        )
        return model
