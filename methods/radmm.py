"""RADMM: robustness-aware ADMM pruning (Ye, Xu, Liu, et al., "Adversarial Robustness vs. Model
Compression, or Both?", ICCV 2019; code github.com/yeshaokai/Robustness-Aware-Pruning-ADMM).

Algorithm (methods.md 6.2), starting from the suite's PGD-AT dense model (the paper's step 1):
1. plan: a per-layer keep count at a uniform density 1/B, and a projection Proj_l onto
   "at most k_l weights" (`structure="irregular"`: the k_l largest |w|) or onto "whole filters"
   (`structure="filter"`: the filters, rows of W_mat, of largest L2 norm);
2. ADMM under PGD-AT: minimise CE_adv(W) + sum_l rho_l/2 ||W_l - Z_l + U_l||^2 with SGD; every
   `admm_epoch` epochs rho_l *= 1.3, Z_l = Proj_l(W_l + U_l), U_l += W_l - Z_l (Z_0 = Proj(W),
   U_0 = 0); the learning rate restarts at each update and drops x0.1 every third of a period;
3. hard prune: mask_l = support of Proj_l(W_l);
4. masked PGD-AT retraining (gradients masked, pruned weights re-zeroed after every step);
5. `structure="filter"` only: the pruned filters leave the model
   (`rbench.layers.structured.KeptFilters` stores and computes only the kept ones), so the MACs
   count falls with them.
The ADMM state is the shared, projection-generic `rbench.train.admm.ADMM` (CSTAR uses it too).

Defaults are the authors' code (verified, config.yaml.example / admm.py / adv_main.py): rho 1e-3,
rho x1.3 per update ("multi_rho"), admm_epoch 20 of 200 ADMM epochs, 200 retraining epochs, SGD
lr 0.01, momentum 0.9, weight decay 1e-4, loss CE on PGD examples only.

Budget: the harness's budget replaces the paper's 200 + 200 epochs; both phases are scaled by the
same factor (ADMM : retrain = admm_epochs : retrain_epochs) and the number of Z-updates
(admm_epochs / admm_epoch = 10) is kept, so at a 3-epoch budget (mnist5k v1's) a Z-update
happens every 0.15 epochs. The dense PGD-AT pretraining is the shared dense model (methods.md 7).
rho stays the paper's 1e-3 although the rounds are far shorter: on mnist5k v1 a larger rho, scaled
to the short rounds or converging ADMM, did worse (docs/findings.md, "radmm").

Variants: "harness" generates the training attack in eval mode (the suite's protocol); "paper"
generates it in train mode, as the authors' code does (methods.md 0.3, pitfall 1). On models
without BatchNorm (the embedded suites' smallcnn) the two coincide.

Deviations and choices:
- Layers (`layers`). The paper prunes the conv layers listed in its config and keeps FC layers
  dense. At the harness's global ratio that is often unreachable (mnist5k's smallcnn holds 91%
  of its weights in its first Linear), so the default prunes every Conv2d/Linear at a uniform
  density; `layers="conv"` is the paper's setting and `check()` refuses it, before any training,
  where the dense FC layers alone exceed floor(N/B).
- Filter variant on Linear layers: a "filter" is an output neuron (a row of W). The classifier
  (the last compressible layer) is projected irregularly instead, because removing its rows
  would delete classes.
- Exact counts in the filter variant: a layer keeps floor(k_l / filter size) whole filters; the
  remaining k_l mod (filter size) weights are the largest |w| of the next-ranked filter (one
  partial filter per layer), so the model stores floor(N/B) weights exactly. All other filters
  are entirely zero. `exact=False` keeps whole filters only (stores slightly fewer).
- Biases of removed filters are kept (not counted by the harness; a removed filter then outputs
  a constant, which the next layer absorbs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rbench.core.budget import Budget, compressible_layers
from rbench.core.errors import RbenchError
from rbench.core.registry import Method, SGDConfig, register_method
from rbench.layers import apply_masks, keep_counts, mask_gradients, reapply_masks, top_k_mask
from rbench.layers.structured import drop_pruned_filters
from rbench.train.admm import ADMM, layer_weights
from rbench.train.trainer import StepHooks


@dataclass
class RADMMConfig(SGDConfig):
    variant: Literal["harness", "paper"] = "harness"
    structure: Literal["irregular", "filter"] = "irregular"
    layers: Literal["all", "conv"] = "all"  # paper: "conv" (FC dense); see the docstring
    exact: bool = True  # filter variant: fill the remainder with one partial filter per layer
    rho: float = 1e-3
    rho_growth: float = 1.3
    admm_epochs: float = 200.0  # paper's phase lengths; only their ratio and
    admm_epoch: float = 20.0  # the number of Z-updates survive the budget scaling
    retrain_epochs: float = 200.0
    admm_lr: float | None = None  # None: Method.finetune_lr (paper: 0.01)
    retrain_lr: float | None = None  # likewise


# ------------------------------------------------------------------------------ projections


def irregular_mask(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest |w|."""
    return top_k_mask(weight.abs(), k)


def filter_mask(weight: torch.Tensor, k: int, exact: bool = True) -> torch.Tensor:
    """Keep whole filters (rows of W_mat) by L2 norm, k weights in all: floor(k / filter size)
    whole filters, then (if `exact`) the largest |w| of the next filter for the remainder."""
    rows = weight.detach().flatten(1)
    size = rows.shape[1]
    whole, rest = divmod(min(k, rows.numel()), size)
    order = torch.argsort(rows.norm(dim=1), descending=True)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask[order[:whole]] = True
    if exact and rest and whole < rows.shape[0]:
        partial = order[whole]
        mask[partial] = top_k_mask(rows[partial].abs(), rest)
    return mask.view_as(weight)


def support(
    path: str, t: torch.Tensor, k: int, structure: str, exact: bool, classifier: str
) -> torch.Tensor:
    """The support of Proj_l(t): the classifier is always projected irregularly (docstring)."""
    if structure == "filter" and path != classifier:
        return filter_mask(t, k, exact)
    return irregular_mask(t, k)


def projection(
    counts: dict[str, int], structure: str, exact: bool, classifier: str
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """Proj_l(t): t with everything outside the layer's constraint set zeroed."""

    def project(path: str, t: torch.Tensor) -> torch.Tensor:
        return t * support(path, t, counts[path], structure, exact, classifier)

    return project


def admm_lr_factor(rounds: int) -> Callable[[float], float]:
    """The authors' periodic schedule as a multiple of the base LR over the phase's progress:
    back to 1 at each Z-update, x0.1 after each third of a period."""

    def factor(progress: float) -> float:
        within = (progress * rounds) % 1.0
        return 0.1 ** min(2, math.floor(3 * within))

    return factor


# ------------------------------------------------------------------------------ the method


@register_method
class RADMM(Method):
    """Robustness-aware ADMM pruning (Ye et al. ICCV 2019), unstructured or filter-structured."""

    name = "radmm"
    kind = "unstructured"
    citation = (
        "Ye, Xu, Liu, Hu, Lin, Wang, Fardad, Lin, Adversarial Robustness vs. Model Compression, "
        "or Both?, ICCV 2019"
    )
    Config = RADMMConfig
    tuned = ("admm_lr", "retrain_lr")  # the fine-tuning rate(s) `rbench tune` sets
    variants = ("harness", "paper")

    def plan(self, model: nn.Module, ratio: float) -> dict[str, int]:
        """Keep counts per layer: uniform density over the pruned layers, exact in total."""
        layers = compressible_layers(model)
        sizes = {p: m.weight.numel() for p, m in layers.items()}
        dense = [p for p, m in layers.items() if not isinstance(m, nn.Conv2d)]
        if self.config.layers == "all":
            dense = []
        allowed, kept_dense = math.floor(sum(sizes.values()) / ratio), sum(sizes[p] for p in dense)
        if len(dense) == len(sizes):
            raise RbenchError("radmm with layers=conv needs a model with Conv2d layers")
        if dense and allowed - kept_dense < len(sizes) - len(dense):
            raise RbenchError(
                f"radmm with layers=conv (the paper's setting) keeps the Linear layers dense "
                f"({kept_dense} weights), but ratio {ratio:g} allows {allowed} weights in all; "
                "use --opt layers=all (the default) or a smaller ratio"
            )
        counts = keep_counts(sizes, ratio, dense=dense, exact=True)
        return {p: k for p, k in counts.items() if p not in dense}

    def check(self, model: nn.Module, budget: Budget) -> None:
        self.plan(model, budget.ratio)

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        cfg = self.config
        counts = self.plan(model, budget.ratio)
        before = self.supports(model, counts)  # the dense model's own projection
        admm = self.admm_phase(model, counts, ctx)
        residual = admm.primal_residual(model)
        masks = self.hard_prune(model, counts)
        self.retrain(model, ctx)
        if cfg.structure == "filter":  # step 5: the pruned filters leave storage and compute
            ctx.report["dropped_filters"] = drop_pruned_filters(model)
        ctx.report.update(
            {
                "admm_updates": admm.updates,
                "admm_final_rho": max(admm.rho.values()),
                "admm_primal_residual_before_prune": residual,
                # 1.0: ADMM kept exactly the weights magnitude pruning of the dense model keeps
                "mask_agreement_with_dense_projection": mask_agreement(before, masks),
                "pruned_filters": {
                    p: int((m.flatten(1).sum(1) == 0).sum()) for p, m in masks.items()
                },
                "structure": cfg.structure,
            }
        )
        return model

    # -- step 2
    def admm_phase(self, model: nn.Module, counts: dict[str, int], ctx) -> ADMM:
        cfg = self.config
        share = cfg.admm_epochs / (cfg.admm_epochs + cfg.retrain_epochs)
        epochs = ctx.affordable_epochs(share)
        rounds = max(1, round(cfg.admm_epochs / cfg.admm_epoch))
        # floor, as the trainer counts steps: an update is never placed past the last step
        total = max(1, math.floor(epochs * len(ctx.loader("train", cfg.batch_size)) + 1e-9))
        admm = ADMM(
            model,
            layer_weights(counts),
            projection(counts, cfg.structure, cfg.exact, _classifier(model)),
            rho=cfg.rho,
            rho_growth=cfg.rho_growth,
        )
        updates = {math.floor(i * total / rounds) for i in range(1, rounds)} - {0, total}
        ctx.fit_sgd(
            model,
            cfg,
            epochs=epochs,
            lr=self.finetune_lr(ctx, cfg.admm_lr, paper=0.01),
            schedule=admm_lr_factor(rounds),
            loss="adv",
            attack_mode="train" if cfg.variant == "paper" else "eval",
            hooks=StepHooks(regularizer=admm.penalty, after_step=admm.after_steps(updates)),
            tag="ADMM",
        )
        return admm

    # -- step 3
    def supports(self, model: nn.Module, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        """mask_l = support of Proj_l(W_l), for the weights as they are now."""
        cfg, layers, classifier = self.config, compressible_layers(model), _classifier(model)
        return {
            p: support(p, layers[p].weight.detach(), k, cfg.structure, cfg.exact, classifier)
            for p, k in counts.items()
        }

    def hard_prune(self, model: nn.Module, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        masks = self.supports(model, counts)
        apply_masks(model, masks)
        reapply_masks(model)
        return masks

    # -- step 4
    def retrain(self, model: nn.Module, ctx) -> None:
        cfg = self.config
        ctx.fit_sgd(
            model,
            cfg,
            epochs=ctx.affordable_epochs(),
            lr=self.finetune_lr(ctx, cfg.retrain_lr, paper=0.01),
            loss="adv",
            attack_mode="train" if cfg.variant == "paper" else "eval",
            hooks=StepHooks(after_backward=mask_gradients, after_step=reapply_masks),
            tag="masked retraining",
        )


def _classifier(model: nn.Module) -> str:
    """The last compressible layer: the one whose rows are the classes."""
    return list(compressible_layers(model))[-1]


def mask_agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The share of the weights kept by `b` that `a` keeps too (1.0: the same support)."""
    kept = sum(int(m.sum()) for m in b.values())
    both = sum(int((a[p] & m).sum()) for p, m in b.items())
    return both / max(kept, 1)
