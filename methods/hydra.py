"""HYDRA: pruning by importance scores optimised with the robust loss (Sehwag, Wang, Mittal,
Jana, "HYDRA: Pruning Adversarially Robust Neural Networks", NeurIPS 2020, arXiv:2002.10509;
code github.com/inspire-group/hydra).

Algorithm (methods.md 6.1), starting from the suite's adversarially trained dense model (the
paper's step 1, shared by every method):
1. scores: every Conv2d/Linear (first conv and classifier included) gets a score tensor s, scaled
   score init s = sqrt(6 / fan_in) * W / max|W| (so the first mask is the magnitude mask);
2. prune: weights and biases frozen; the forward uses W .* m(|s|), m = 1 on the k_l largest |s|
   of each layer (uniform density 1/B); the gradient reaches s straight through the top-k; the
   scores train with the robust loss (SGD lr 0.1, cosine);
3. fine-tune: scores frozen, i.e. the mask fixed (kept as a torch.nn.utils.prune mask, so
   gradients are masked and pruned weights re-zeroed after every step), the surviving weights
   train with the robust loss (SGD, cosine; the paper's lr 0.01, the harness variant the suite's
   `finetune_lr`).
The score layers are the shared `rbench.train.scores` mechanism.

Paper defaults (code configs): 20 prune epochs + 100 fine-tune epochs, SGD momentum 0.9, weight
decay 1e-4, TRADES (beta 6) in the released code path.
Budget: the harness budget replaces the 20 + 100 epochs; the two phases keep their 20 : 100
ratio (1/6 of the budget for the scores, the rest for fine-tuning). Dense pretraining is the
shared dense model (methods.md 7).
Variants: "harness" trains both phases with the suite's PGD-AT loss; "paper" with TRADES
(beta 6, the KL inner maximisation of rbench.train.trainer), charged at TRADES' cost, so it
affords fewer epochs.

Deviations and choices:
- Per-layer counts are floor(N/B) distributed in proportion to layer size with the rounding
  remainder spread one weight per layer (`keep_counts(exact=True)`), so the model stores exactly
  floor(N/B) weights; HYDRA's `int((1 - k) * numel)` per layer stores a few more or fewer.
- The attack runs in eval mode (the harness's protocol; also HYDRA's), the update in train mode.
- TRADES' inner maximisation (paper variant) starts at x + 0.001 N(0, 1) as HYDRA's code does
  (rbench.core.pgd, loss "kl"); the harness variant's PGD-AT starts uniformly in the ball.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from rbench.core.budget import Budget, compressible_layers
from rbench.core.registry import Method, SGDConfig, register_method
from rbench.layers import keep_counts, mask_gradients, reapply_masks
from rbench.train.scores import attach_scores, freeze_weights, scores_to_masks
from rbench.train.trainer import StepHooks


@dataclass
class HydraConfig(SGDConfig):
    variant: Literal["harness", "paper"] = "harness"
    prune_epochs: float = 20.0  # the paper's phase lengths; only their ratio survives
    finetune_epochs: float = 100.0  # the budget scaling
    prune_lr: float = 0.1
    finetune_lr: float | None = None  # None: Method.finetune_lr (paper: 0.01)
    trades_beta: float = 6.0


@register_method
class Hydra(Method):
    """HYDRA: importance scores trained with the robust loss, then adversarial fine-tuning."""

    name = "hydra"
    kind = "unstructured"
    citation = (
        "Sehwag, Wang, Mittal, Jana, HYDRA: Pruning Adversarially Robust Neural Networks, "
        "NeurIPS 2020"
    )
    Config = HydraConfig
    tuned = ("finetune_lr",)  # the fine-tuning rate(s) `rbench tune` sets
    variants = ("harness", "paper")

    @property
    def loss(self) -> str:
        return "trades" if self.config.variant == "paper" else "adv"

    def plan(self, model: nn.Module, ratio: float) -> dict[str, int]:
        sizes = {p: m.weight.numel() for p, m in compressible_layers(model).items()}
        return keep_counts(sizes, ratio, exact=True)

    def check(self, model: nn.Module, budget: Budget) -> None:
        self.plan(model, budget.ratio)

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        attach_scores(model, self.plan(model, budget.ratio))
        self.prune(model, ctx)
        masks = scores_to_masks(model)
        self.finetune(model, ctx)
        ctx.report["density_per_layer"] = {p: float(m.float().mean()) for p, m in masks.items()}
        return model

    def _fit(self, model: nn.Module, ctx, **kwargs) -> None:
        cfg = self.config
        ctx.fit_sgd(
            model,
            cfg,
            loss=self.loss,
            trades_beta=cfg.trades_beta,
            **kwargs,
        )

    # -- step 2
    def prune(self, model: nn.Module, ctx) -> None:
        """Train the scores with the weights and biases frozen."""
        cfg = self.config
        freeze_weights(model)
        share = cfg.prune_epochs / (cfg.prune_epochs + cfg.finetune_epochs)
        self._fit(
            model,
            ctx,
            epochs=ctx.affordable_epochs(share, loss=self.loss),
            lr=cfg.prune_lr,
            tag="score optimisation",
        )

    # -- step 3
    def finetune(self, model: nn.Module, ctx) -> None:
        """Train the surviving weights with the mask fixed."""
        self._fit(
            model,
            ctx,
            epochs=ctx.affordable_epochs(loss=self.loss),
            lr=self.finetune_lr(ctx, self.config.finetune_lr, paper=0.01),
            hooks=StepHooks(after_backward=mask_gradients, after_step=reapply_masks),
            tag="adversarial fine-tuning",
        )
