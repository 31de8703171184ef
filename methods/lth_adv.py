"""Lottery tickets under adversarial training: iterative magnitude pruning with rewinding
(Cosentino, Zaiter, Pei, Zhu, "The Search for Sparse, Robust Neural Networks", NeurIPS 2019
Workshop on Safety and Robustness in Decision Making, arXiv:1912.02386; code
github.com/justincosentino/robust-sparse-networks).

Algorithm (methods.md 1(b)):
0. train the network from its rewind point theta_r with the robust loss (round 0);
1. for rounds k = 1..R:
   a. prune, in each layer separately, the fraction p_l of its surviving weights with the smallest
      |w| (p = 0.2; the output layer at p/2);
   b. rewind the survivors, and every other parameter, to theta_r;
   c. train again with the robust loss, the mask fixed (masked gradients, pruned weights re-zeroed
      after every step) and a fresh optimiser (the released code rebuilds Adam every round).
R is the smallest number of rounds whose schedule reaches floor(N/B) weights; with one rate for
all layers it is ceil(ln B / -ln(1 - p)) (B = 16, p = 0.2: 13). The last round prunes the
fraction q * p_l of each layer, q in (0, 1] chosen so exactly floor(N/B) weights survive.

Rewind points (`rewind_to`):
- "init" (default; the README's "reset to original", true LTH): theta_0 is a fresh
  initialisation, every module's own `reset_parameters()` under a seed drawn from
  `ctx.generator("lth-adv/theta0")`. The harness's dense model comes from a different init, and a
  ticket is the pair (mask, theta_0), so round 0 is a training from theta_0 paid from the budget;
  the dense model's weights are not used. The budget is split evenly over the R + 1 trainings.
- "round0_trained" (what the released code does: `train_once` returns the trained kernels and
  they are fed back as the "original" ones): theta_r is the trained round-0 network, which is
  exactly the dense model the harness hands over (trained from init with the suite's recipe), so
  round 0 costs nothing here and the budget is split evenly over the R rounds.
At mnist5k v1's budget only "round0_trained" found robust tickets: true LTH needs about R + 1
full trainings (docs/findings.md, "lth-adv").

Variants:
- "harness": each round is a training from the rewind point, so it uses the suite's dense recipe
  (optimiser, lr, schedule, momentum, weight decay, eps ramp, batch size) with the paper's loss,
  0.5 clean + 0.5 adversarial CE ("mixed", the trait methods.md asks to keep) on the suite's PGD;
  a mixed epoch costs more passes, so the budget buys fewer of them.
- "paper": the paper's training: 0.5 clean + 0.5 adversarial CE ("mixed") with the suite's PGD,
  Adam lr 1.2e-3 at a constant rate, batch 60, label smoothing 0.1 on the training labels.

Budget: the paper trains every round for 50,000 iterations (60 epochs, R = 20: about 21 x 60
epochs); here the harness budget is split evenly across the trainings, so each round is short.

Deviations and choices:
- Layer-wise rates as in the code (not global). The threshold keeps exactly the scheduled count
  per layer (ties by position) instead of the code's `|w| <= thr`, which prunes one extra weight
  at ties. A layer's count after a round is c - round(p_l * c).
- The "output layer" is the model's last Conv2d/Linear in module order (the classifier).
- The paper trains with its own attack (FGSM or PGD, eps 0.3, step 0.05, 10 steps on MNIST); both
  variants use the suite's PGD at the suite's eps so the ticket is trained for the threat it is
  evaluated on. Evaluation at a fixed iteration / early stopping on the validation loss (the
  paper's analysis) is not done: the final round's last iterate is returned.
- theta_0 by `reset_parameters()` is PyTorch's default init (what the harness's dense training
  starts from); the paper's MLP used Glorot-uniform without biases.
UNVERIFIED (methods.md): the constant Adam learning rate (no schedule is reported); the rewinding
of biases and normalisation parameters with the weights (the paper's MLP has neither).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rbench.core.budget import Budget, compressible_layers, effective_weight
from rbench.core.errors import RbenchError
from rbench.core.registry import Method, MethodConfig, register_method
from rbench.layers import apply_masks, finalize, mask_gradients, reapply_masks, top_k_mask
from rbench.train.trainer import StepHooks

THETA0_TAG = "lth-adv/theta0"
# the paper's training (Cosentino et al. code: Adam, batch 60, label smoothing, 50/50 loss)
PAPER_RECIPE = {
    "optimizer": "adam",
    "lr": 1.2e-3,
    "batch_size": 60,
    "label_smoothing": 0.1,
    "loss": "mixed",
    "schedule": "constant",
}


@dataclass
class LTHAdvConfig(MethodConfig):
    variant: Literal["harness", "paper"] = "harness"
    rewind_to: Literal["init", "round0_trained"] = "init"
    rate: float = 0.2  # per-round pruning rate p of each hidden layer
    output_rate_factor: float = 0.5  # the output layer is pruned at p * this
    lr: float | None = None  # None: the variant's (paper 1.2e-3; harness the suite's)
    batch_size: int | None = None  # None: the variant's (paper 60; harness the suite's)


@register_method
class LTHAdv(Method):
    """Lottery tickets with adversarial training: iterative magnitude pruning and rewinding."""

    name = "lth-adv"
    kind = "unstructured"
    citation = (
        "Cosentino, Zaiter, Pei, Zhu, The Search for Sparse, Robust Neural Networks, NeurIPS 2019 "
        "Workshop on Safety and Robustness in Decision Making, arXiv:1912.02386"
    )
    Config = LTHAdvConfig
    variants = ("harness", "paper")

    @classmethod
    def default_rate(cls, suite) -> float:
        """The harness rounds train with the suite's dense recipe, so its rate is the default."""
        return suite.dense.lr

    def check(self, model: nn.Module, budget: Budget) -> None:
        if not 0 < self.config.rate < 1:
            raise RbenchError(f"lth-adv: rate must be in (0, 1), got {self.config.rate}")
        round_schedule(layer_sizes(model), budget.ratio, self.rates(model))

    def rates(self, model: nn.Module) -> dict[str, float]:
        layers = list(compressible_layers(model))
        cfg = self.config
        return {p: cfg.rate * (cfg.output_rate_factor if p == layers[-1] else 1.0) for p in layers}

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        cfg = self.config
        schedule = round_schedule(layer_sizes(model), budget.ratio, self.rates(model))
        if not schedule:  # ratio 1: nothing to prune
            return model
        theta = rewind_point(model, cfg.rewind_to, ctx)
        recipe = self.recipe(ctx)
        trainings = len(schedule) + int(cfg.rewind_to == "init")
        rounds = []
        if cfg.rewind_to == "init":  # round 0 from theta_0 (else: the handed dense model)
            rewind(model, theta)
            rounds.append(train_round(model, recipe, ctx, trainings, tag="round 0"))
        for k, counts in enumerate(schedule, start=1):
            apply_masks(model, prune_round(model, counts))  # a. prune p_l of the survivors
            rewind(model, theta)  # b. rewind
            left = trainings - len(rounds)
            rounds.append(train_round(model, recipe, ctx, left, tag=f"round {k}"))  # c. train
            rounds[-1]["kept"] = sum(counts.values())
        ctx.report.update(
            rewind_to=cfg.rewind_to,
            n_rounds=len(schedule),
            kept_per_layer=schedule[-1],
            rounds=rounds,
        )
        return model

    def recipe(self, ctx) -> dict:
        """How one round trains, by variant (see the module docstring)."""
        cfg = self.config
        if cfg.variant == "paper":
            recipe = dict(PAPER_RECIPE)
        else:
            dense = ctx.suite.dense
            recipe = {
                "optimizer": dense.optimizer,
                "lr": dense.lr,
                "batch_size": dense.batch_size,
                "label_smoothing": 0.0,
                "loss": "mixed",  # the paper's 0.5 clean + 0.5 adversarial CE (methods.md 1)
                "schedule": dense.schedule,
                "momentum": dense.momentum,
                "weight_decay": dense.weight_decay,
                "eps_ramp": dense.eps_ramp,
            }
        recipe["lr"] = cfg.lr if cfg.lr is not None else recipe["lr"]
        recipe["batch_size"] = cfg.batch_size or recipe["batch_size"]
        return recipe


def layer_sizes(model: nn.Module) -> dict[str, int]:
    return {p: m.weight.numel() for p, m in compressible_layers(model).items()}


def round_schedule(
    sizes: dict[str, int], ratio: float, rates: dict[str, float]
) -> list[dict[str, int]]:
    """Surviving weights per layer after each round 1..R; the last round totals floor(N/ratio)."""
    target = math.floor(sum(sizes.values()) / ratio)
    if target < len(sizes):
        raise RbenchError(f"lth-adv: ratio {ratio:g} leaves fewer weights than layers")
    counts, schedule = dict(sizes), []
    while sum(counts.values()) > target:
        after = {p: c - round(rates[p] * c) for p, c in counts.items()}
        if sum(after.values()) <= target:
            after = final_round(counts, rates, target)
        counts = after
        schedule.append(counts)
    return schedule


def final_round(counts: dict[str, int], rates: dict[str, float], target: int) -> dict[str, int]:
    """A round at a fraction q of the scheduled rates, so that exactly `target` weights survive:
    each layer keeps counts * (1 - q * p_l), the rounding remainder going one weight each to the
    layers with the largest fractional parts."""
    q = (sum(counts.values()) - target) / sum(counts[p] * rates[p] for p in counts)
    ideal = {p: counts[p] * (1 - q * rates[p]) for p in counts}
    cut = {p: min(counts[p], max(1, math.floor(v))) for p, v in ideal.items()}
    left = target - sum(cut.values())
    for p in sorted(ideal, key=lambda p: math.floor(ideal[p]) - ideal[p]):
        if left > 0 and cut[p] < counts[p]:
            cut[p], left = cut[p] + 1, left - 1
    while left < 0:  # only where max(1, .) lifted a layer: take it from the largest
        p = max(cut, key=cut.get)
        cut[p], left = cut[p] - 1, left + 1
    return cut


def rewind_point(model: nn.Module, rewind_to: str, ctx) -> dict[str, torch.Tensor]:
    """theta_r: a fresh seeded init ("init") or the handed, trained dense model
    ("round0_trained"), as a state dict of the unpruned model."""
    if rewind_to == "round0_trained":
        return {
            k: v.detach().clone() for k, v in finalize(copy.deepcopy(model)).state_dict().items()
        }
    if rewind_to == "init":
        return draw_init(model, ctx.generator(THETA0_TAG))
    raise RbenchError(f"lth-adv: unknown rewind_to '{rewind_to}' (choose init or round0_trained)")


def draw_init(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every module's `reset_parameters()` on a CPU copy, under a seed from `generator`: the same
    theta_0 on every device, and torch's global RNG left as it was."""
    device = next(model.parameters()).device
    fresh = finalize(copy.deepcopy(model)).cpu()
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for module in fresh.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    return {k: v.detach().to(device) for k, v in fresh.state_dict().items()}


@torch.no_grad()
def rewind(model: nn.Module, theta: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer back to theta; pruned weights stay zero."""
    for name, value in theta.items():
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if attr == "weight" and hasattr(module, "weight_orig"):
            attr = "weight_orig"
        getattr(module, attr).copy_(value)
    reapply_masks(model)


@torch.no_grad()
def prune_round(model: nn.Module, counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """In each layer, keep the counts[p] largest |w| among the weights that survive so far."""
    masks = {}
    for path, module in compressible_layers(model).items():
        alive = getattr(module, "weight_mask", torch.ones_like(module.weight)).bool()
        score = effective_weight(module).abs().masked_fill(~alive, -1.0)
        masks[path] = top_k_mask(score, counts[path])
    return masks


def train_round(model: nn.Module, recipe: dict, ctx, trainings_left: int, tag: str) -> dict:
    """One training of the ticket with its share of what is left of the budget and a fresh
    optimiser; returns what the record keeps of it."""
    recipe = dict(recipe)
    loss = recipe.pop("loss")
    epochs = ctx.affordable_epochs(1.0 / trainings_left, loss=loss)
    ctx.fit(
        model,
        epochs=epochs,
        loss=loss,
        hooks=StepHooks(after_backward=mask_gradients, after_step=reapply_masks),
        tag=tag,
        **recipe,
    )
    return {"round": tag, "epochs": epochs, "val_accuracy": ctx.accuracy(model, "val")}
