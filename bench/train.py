"""The one adversarial training epoch, and `fit`, the loop every method trains through.

Losses (Madry et al. 2018; Cosentino et al. 2019; Zhang et al. 2019):
- "ce": natural cross-entropy, no attack;
- "adv": cross-entropy on PGD examples (PGD-AT);
- "mixed": 0.5 clean + 0.5 adversarial cross-entropy;
- "trades": CE(clean) + beta * KL(f(x) || f(x')), x' from PGD on the KL term.
Every forward-backward pass is charged to the compute meter, so methods are compared at equal cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rbench.attacks import PGD
from rbench.budget import ComputeMeter
from rbench.errors import RbenchError

# forward-backward passes per sample of the training step itself (the attack is charged apart)
LOSS_PASSES = {"ce": 1, "adv": 1, "mixed": 2, "trades": 2}


@dataclass
class StepHooks:
    """What a method adds to the shared loop, each optional.

    regularizer(model) -> scalar added to the loss (ADMM penalty, conditioning term, ...);
    after_backward(model) edits gradients (mask them, project them);
    after_step(model) runs after each optimiser step (re-apply masks, retract bases, ...).
    """

    regularizer: Callable[[nn.Module], torch.Tensor] | None = None
    after_backward: Callable[[nn.Module], None] | None = None
    after_step: Callable[[nn.Module], None] | None = None


def make_optimizer(
    params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise RbenchError(f"unknown optimizer '{name}' (choose sgd or adam)")


def lr_at(schedule: str | Callable[[float], float], base_lr: float, progress: float) -> float:
    """Learning rate at `progress` in [0, 1] of a phase: cosine decay, constant, or a callable
    giving the multiple of `base_lr` at that progress (e.g. ADMM's periodic restarts)."""
    if callable(schedule):
        return base_lr * schedule(min(progress, 1.0))
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "constant":
        return base_lr
    raise RbenchError(f"unknown learning-rate schedule '{schedule}' (choose cosine or constant)")


def train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    attack: PGD | None,
    meter: ComputeMeter,
    loss: str = "adv",
    hooks: StepHooks | None = None,
    generator: torch.Generator | None = None,
    max_batches: int | None = None,
    set_lr: Callable[[int], None] | None = None,
    attack_mode: str = "eval",
    trades_beta: float = 6.0,
    label_smoothing: float = 0.0,
    bar: str | None = None,
) -> dict[str, float]:
    """One pass over `loader` (or its first `max_batches`). Returns mean loss and accuracy on the
    examples trained on. `attack_mode` is the BatchNorm mode the attack runs in (methods.md 0.3)."""
    if loss not in LOSS_PASSES:
        raise RbenchError(f"unknown training loss '{loss}' (choose {', '.join(LOSS_PASSES)})")
    hooks = hooks or StepHooks()
    total_loss, correct, seen = 0.0, 0, 0
    batches = loader
    if bar is not None:
        from tqdm import tqdm

        total = len(loader) if max_batches is None else min(len(loader), max_batches)
        # disable=None: a live bar on a terminal, silence in logs and CI
        batches = tqdm(loader, desc=bar, total=total, leave=False, disable=None)
    for b, (x, y) in enumerate(batches):
        if max_batches is not None and b >= max_batches:
            break
        if set_lr is not None:
            set_lr(b)
        x_adv = None
        if loss != "ce" and attack is not None:
            model.train(attack_mode == "train")
            x_adv = attack.perturb(
                model, x, y, generator=generator, loss="kl" if loss == "trades" else "ce"
            )
            meter.charge(len(y), attack.steps)
        model.train()
        value, logits = _loss(model, x, y, x_adv, loss, trades_beta, label_smoothing)
        if hooks.regularizer is not None:
            value = value + hooks.regularizer(model)
        if not torch.isfinite(value):
            raise RbenchError(
                f"training loss became {value.item()} at batch {b}; lower the learning rate "
                "(for example --opt lr=...) or check the model"
            )
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if hooks.after_backward is not None:
            hooks.after_backward(model)
        optimizer.step()
        if hooks.after_step is not None:
            hooks.after_step(model)
        meter.charge(len(y), LOSS_PASSES[loss] if x_adv is not None or loss == "ce" else 1)
        total_loss += value.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


def _loss(model, x, y, x_adv, loss, beta, smoothing):
    if loss == "ce" or x_adv is None:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=smoothing), logits
    if loss == "adv":
        logits = model(x_adv)
        return F.cross_entropy(logits, y, label_smoothing=smoothing), logits
    clean = model(x)
    if loss == "mixed":
        logits = model(x_adv)
        value = 0.5 * F.cross_entropy(clean, y, label_smoothing=smoothing)
        return value + 0.5 * F.cross_entropy(logits, y, label_smoothing=smoothing), logits
    adv = model(x_adv)  # trades
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
    return F.cross_entropy(clean, y) + beta * kl, adv


def fit(
    model: nn.Module,
    loader,
    *,
    attack: PGD | None,
    meter: ComputeMeter,
    epochs: float,
    lr: float,
    optimizer: str | torch.optim.Optimizer = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str | Callable[[float], float] = "cosine",
    loss: str = "adv",
    hooks: StepHooks | None = None,
    seed: int = 0,
    eps_ramp: float = 0.0,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    start_epoch: int = 0,
    progress: Callable[[int, dict], None] | None = None,
    **epoch_kwargs,
) -> torch.optim.Optimizer:
    """Train for `epochs` (fractional allowed: the last epoch stops early) with the learning rate
    following `schedule` per step. `eps_ramp` ramps the attack's eps linearly from 0 over that
    fraction of the epochs (curriculum for MNIST-scale eps). Returns the optimiser."""
    if epochs <= 0:
        return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    if isinstance(optimizer, str):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, optimizer, lr, momentum, weight_decay)
    n_batches, n_epochs = len(loader), math.ceil(epochs)
    # floor, not round: a fractional budget must never buy a batch it cannot pay for
    total_steps = max(1, math.floor(epochs * n_batches + 1e-9))
    for epoch in range(start_epoch, n_epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)

        def set_lr(b: int, epoch: int = epoch) -> None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(schedule, lr, (epoch * n_batches + b) / total_steps)

        step_attack = attack
        if attack is not None and eps_ramp > 0:
            scale = min(1.0, (epoch + 1) / max(1.0, eps_ramp * epochs))
            step_attack = PGD(
                attack.norm,
                attack.eps * scale,
                attack.step_size * scale,
                attack.steps,
                attack.random_start,
            )
        last = total_steps - epoch * n_batches
        stats = train_epoch(
            model,
            loader,
            optimizer,
            attack=step_attack,
            meter=meter,
            loss=loss,
            hooks=hooks,
            generator=generator,
            max_batches=min(n_batches, last),
            set_lr=set_lr,
            **epoch_kwargs,
        )
        if progress is not None:
            progress(epoch, stats)
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
    return optimizer
