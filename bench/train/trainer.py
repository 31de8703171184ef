"""The one adversarial training epoch, and `fit`, the loop every method trains through.

Losses (Madry et al. 2018; Cosentino et al. 2019; Zhang et al. 2019):
- "ce": natural cross-entropy, no attack;
- "adv": cross-entropy on PGD examples (PGD-AT);
- "mixed": 0.5 clean + 0.5 adversarial cross-entropy;
- "trades": CE(clean) + beta * KL(f(x) || f(x')), x' from PGD on the KL term.
Every forward-backward pass is charged to the compute meter, so methods are compared at equal cost.

Speed on a GPU (docs/performance.md) is a setting of this one loop, so every method gets it:
- `precision`: "fp32", "bf16" (autocast for the training forward and the training attack; the
  backward, the optimiser and the weights stay fp32) or "auto" (bf16 on CUDA, fp32 elsewhere);
- `channels_last`: "inputs" (batches in channels-last layout: cuDNN then runs NHWC kernels while
  the parameters keep their layout, so code that views conv weights keeps working), "model"
  (parameters too, restored to contiguous when `fit` returns), "off", or "auto" ("inputs" on
  CUDA, "off" elsewhere);
- `compile`: run the forward passes through `torch.compile` (off by default);
- no host synchronisation per batch: loss and accuracy are summed as device tensors and read once
  per epoch; on CPU the non-finite-loss check stays per batch (it costs nothing there), elsewhere
  it is checked once at the end of the epoch and names the first bad batch.
On CPU "auto" changes nothing: the numbers are those of plain fp32 training, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rbench.core.budget import ComputeMeter
from rbench.core.errors import RbenchError
from rbench.core.pgd import PGD
from rbench.core.progress import bar as progress_bar
from rbench.core.progress import epoch_counter

# forward-backward passes per sample of the training step itself (the attack is charged apart)
LOSS_PASSES = {"ce": 1, "adv": 1, "mixed": 2, "trades": 2}
PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST = ("auto", "off", "inputs", "model")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision to train in: "auto" is bf16 on CUDA and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise RbenchError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def resolve_channels_last(channels_last: str, device: torch.device | str) -> str:
    """The channels-last mode: "auto" is "inputs" on CUDA and "off" elsewhere."""
    if channels_last not in CHANNELS_LAST:
        raise RbenchError(
            f"unknown channels_last '{channels_last}' (choose {', '.join(CHANNELS_LAST)})"
        )
    if channels_last == "auto":
        return "inputs" if torch.device(device).type == "cuda" else "off"
    return channels_last


def autocast(precision: str, device: torch.device | str):
    """The autocast context of a resolved precision: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def defers_checks(device: torch.device) -> bool:
    """Whether per-batch checks that need the host to wait for the device are deferred to the
    end of the epoch: everywhere but the CPU, where reading a value costs nothing."""
    return device.type != "cpu"


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
    precision: str = "auto",
    channels_last: str = "auto",
    attack_model: nn.Module | None = None,
    loss_model: nn.Module | None = None,
) -> dict[str, float]:
    """One pass over `loader` (or its first `max_batches`). Returns mean loss and accuracy on the
    examples trained on. `attack_mode` is the BatchNorm mode the attack runs in (methods.md 0.3).

    `precision` and `channels_last` as in the module docstring ("model" acts like "inputs" here:
    converting the parameters is `fit`'s job). `attack_model` and `loss_model` are the modules the
    attack and the training loss call (compiled or DDP-wrapped forms of `model`, default `model`
    itself); hooks, the optimiser and the returned statistics see `model`."""
    if loss not in LOSS_PASSES:
        raise RbenchError(f"unknown training loss '{loss}' (choose {', '.join(LOSS_PASSES)})")
    hooks = hooks or StepHooks()
    device = model_device(model)
    precision = resolve_precision(precision, device)
    to_channels_last = resolve_channels_last(channels_last, device) != "off"
    attack_model = attack_model if attack_model is not None else model
    loss_model = loss_model if loss_model is not None else model
    deferred = defers_checks(device)
    # float64 sums of float32 losses: the same numbers the Python-float sum gave, read once
    accum = torch.float32 if device.type == "mps" else torch.float64
    total_loss = torch.zeros((), dtype=accum, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite batch
    seen = 0
    batches = loader
    if bar is not None:  # a live bar on a terminal, silence in logs and CI (rbench.core.progress)
        total = len(loader) if max_batches is None else min(len(loader), max_batches)
        batches = progress_bar(bar, total, unit="batch", iterable=loader)
    for b, (x, y) in enumerate(batches):
        if max_batches is not None and b >= max_batches:
            break
        if set_lr is not None:
            set_lr(b)
        if to_channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        x_adv = None
        if loss != "ce" and attack is not None:
            attack_model.train(attack_mode == "train")
            with autocast(precision, device):
                x_adv = attack.perturb(
                    attack_model, x, y, generator=generator, loss="kl" if loss == "trades" else "ce"
                )
            meter.charge(len(y), attack.steps)
        loss_model.train()
        with autocast(precision, device):
            value, logits = _loss(loss_model, x, y, x_adv, loss, trades_beta, label_smoothing)
        if hooks.regularizer is not None:
            value = value + hooks.regularizer(model)
        if deferred:
            bad = (first_bad < 0) & ~torch.isfinite(value.detach())
            first_bad = torch.where(bad, b, first_bad)
        elif not torch.isfinite(value):
            _raise_nonfinite(value.item(), b)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if hooks.after_backward is not None:
            hooks.after_backward(model)
        optimizer.step()
        if hooks.after_step is not None:
            hooks.after_step(model)
        meter.charge(len(y), LOSS_PASSES[loss] if x_adv is not None or loss == "ce" else 1)
        total_loss += value.detach().to(accum) * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    if deferred and (b_bad := int(first_bad)) >= 0:  # the one read of this epoch's checks
        _raise_nonfinite(None, b_bad)
    return {"loss": total_loss.item() / max(seen, 1), "accuracy": int(correct) / max(seen, 1)}


class Diverged(RbenchError):
    """The training loss became non-finite: the dense stage stops with it; a method's phase is
    stopped (its last finite weights restored) and the run's record is flagged `diverged`."""


def _raise_nonfinite(value: float | None, batch: int):
    shown = "non-finite" if value is None else value
    raise Diverged(
        f"training loss became {shown} at batch {batch}; lower the learning rate "
        "(for example --opt lr=...) or check the model"
    )


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
    precision: str = "auto",
    channels_last: str = "auto",
    compile: bool = False,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    restore_on_divergence: bool = False,
    **epoch_kwargs,
) -> torch.optim.Optimizer:
    """Train for `epochs` (fractional allowed: the last epoch stops early) with the learning rate
    following `schedule` per step. `eps_ramp` ramps the attack's eps linearly from 0 over that
    fraction of the epochs (curriculum for MNIST-scale eps). `on_epoch_end(epoch, stats)` returning
    True stops training after that epoch. With `restore_on_divergence`, a non-finite loss puts
    back the weights of the start of that epoch before `Diverged` is raised. Returns the optimiser.

    `precision`, `channels_last` and `compile` as in the module docstring; their "auto" defaults
    change nothing on CPU. `wrap` wraps the module the training loss calls (for example in
    `DistributedDataParallel`, see rbench.distributed); the attack calls the unwrapped model."""
    if epochs <= 0:
        return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    device = model_device(model)
    precision = resolve_precision(precision, device)
    channels_last = resolve_channels_last(channels_last, device)
    if isinstance(optimizer, str):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, optimizer, lr, momentum, weight_decay)
    n_batches, n_epochs = len(loader), math.ceil(epochs)
    # floor, not round: a fractional budget must never buy a batch it cannot pay for
    total_steps = max(1, math.floor(epochs * n_batches + 1e-9))
    if channels_last == "model":
        # in place: the parameters stay the same objects, so an optimiser built on them still works
        model.to(memory_format=torch.channels_last)
    attack_model = torch.compile(model) if compile else model
    bar_name = epoch_kwargs.get("bar")
    loss_model = wrap(attack_model) if wrap is not None else attack_model
    try:
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
            if epoch_kwargs.get("bar") is not None:  # the bar names the epoch: "tag 2/2.49"
                epoch_kwargs["bar"] = f"{bar_name} {epoch_counter(epoch, epochs)}"
            snapshot = _snapshot(model) if restore_on_divergence else None
            try:
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
                    precision=precision,
                    channels_last=channels_last,
                    attack_model=attack_model,
                    loss_model=loss_model,
                    **epoch_kwargs,
                )
            except Diverged:
                if snapshot is not None:
                    model.load_state_dict(snapshot)
                raise
            if progress is not None:
                progress(epoch, stats)
            if on_epoch_end is not None and on_epoch_end(epoch, stats):
                break  # the caller's stopping rule (the dense stage's plateau rule)
    finally:
        if channels_last == "model":
            model.to(memory_format=torch.contiguous_format)
    return optimizer


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def recipe_parts(
    model: nn.Module, recipe, threat, n_samples: int
) -> tuple[PGD, ComputeMeter, torch.optim.Optimizer]:
    """The training attack, compute meter and optimiser of a suite's dense `recipe` for `model`
    trained on `n_samples` examples (per process)."""
    attack = recipe.attack.pgd(threat)
    optimizer = make_optimizer(
        model.parameters(), recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay
    )
    return attack, ComputeMeter(n_samples, attack.steps), optimizer


def fit_recipe(
    model: nn.Module,
    loader,
    recipe,
    *,
    attack: PGD,
    meter: ComputeMeter,
    optimizer,
    seed: int,
    **kwargs,
) -> torch.optim.Optimizer:
    """PGD-AT following a suite's dense `recipe` (suites.TrainRecipe): the dense stage, in one
    process (rbench.runner) or under torchrun (rbench.distributed)."""
    return fit(
        model,
        loader,
        attack=attack,
        meter=meter,
        epochs=recipe.epochs,
        lr=recipe.lr,
        optimizer=optimizer,
        schedule=recipe.schedule,
        loss="adv",
        seed=seed,
        eps_ramp=recipe.eps_ramp,
        **kwargs,
    )
