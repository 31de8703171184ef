"""The dense stage of a run: the suite's adversarially trained dense model, from the cache, from
the user's checkpoint, or trained now.

Training follows the suite's recipe and resumes from its last finished epoch. With the recipe's
`plateau` rule it stops early: after each epoch at full eps, PGD accuracy (the training attack) on
the first `n_val` validation points; `patience` epochs in a row without a gain of `min_delta`
over the best stop it, and the best epoch's weights are the dense model. What was picked (epochs
trained, best epoch, the validation curve) is kept with the model and lands in every record.
"""

from __future__ import annotations

import torch
from torch import nn

from rbench.core.errors import RbenchError
from rbench.core.pgd import PGD
from rbench.core.suites import Plateau, TrainRecipe
from rbench.data.splits import BatchLoader, DataSplits, Split
from rbench.store.cache import CorruptArtifact
from rbench.store.checkpoint import (
    fit_checkpoint,
    load_model_tensors,
    load_state,
    model_tensors,
    optimizer_tensors,
    read_checkpoint,
    restore_optimizer,
)
from rbench.train.trainer import fit_recipe, recipe_parts


def full_eps_epoch(recipe: TrainRecipe) -> int:
    """The first epoch (0-based) trained at the full eps: the plateau rule watches from there."""
    ramp = recipe.eps_ramp * recipe.epochs
    return max(0, int(-(-ramp // 1)) - 1) if ramp > 1 else 0


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def validation_robust_accuracy(
    model: nn.Module, val: Split, attack: PGD, n: int, seed: int
) -> float:
    """PGD accuracy on the first n validation points (eval mode, a fixed generator)."""
    model.eval()
    part = val.head(min(n, len(val)))
    gen = torch.Generator().manual_seed(seed * 7_919 + 1)
    correct = 0
    for start in range(0, len(part), 500):
        x, y = part.images(slice(start, start + 500)), part.y[start : start + 500]
        x_adv = attack.perturb(model, x, y, generator=gen)
        correct += int((_predict(model, x_adv) == y).sum())
    model.train()
    return correct / max(len(part), 1)


class PlateauWatch:
    """The state of the plateau rule across epochs (and across a resumed run)."""

    def __init__(self, rule: Plateau, state: dict | None = None) -> None:
        self.rule = rule
        state = state or {}
        self.best = state.get("best", -1.0)
        self.best_epoch = state.get("best_epoch", -1)
        self.stale = state.get("stale", 0)
        self.curve = list(state.get("curve", []))

    def update(self, epoch: int, accuracy: float) -> tuple[bool, bool]:
        """(is this epoch the new best, should training stop)."""
        self.curve.append([epoch + 1, round(accuracy, 6)])
        improved = accuracy >= self.best + self.rule.min_delta or self.best_epoch < 0
        if improved:
            self.best, self.best_epoch, self.stale = accuracy, epoch, 0
        else:
            self.stale += 1
        return improved, self.stale >= self.rule.patience

    def state(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "curve": self.curve,
        }


def checkpoint_state(runner) -> tuple[dict, str]:
    """The user's --dense-checkpoint as the suite's model's state dict and the source of its
    input normalisation (rbench.store.checkpoint.fit_checkpoint); every refusal (unreadable,
    another architecture, no normalisation said) is one RbenchError, raised before any compute."""
    cfg = runner.cfg
    source = f"checkpoint '{cfg.dense_checkpoint}'"
    model = runner.new_model()
    state, normalization = fit_checkpoint(
        read_checkpoint(cfg.dense_checkpoint), model, cfg.input_normalization, source
    )
    load_state(model, state, source)
    return state, normalization


def dense_model(runner, data: DataSplits) -> tuple[nn.Module, dict]:
    """The dense model on the runner's device in eval mode, and what is known of how it was made."""
    cfg, store = runner.cfg, runner.store
    if cfg.dense_checkpoint:
        # checked by Runner.run before any compute; read here when called on its own (rbench tune)
        state, normalization = getattr(runner, "checkpoint", None) or checkpoint_state(runner)
    key = runner.stages.keys["dense"] = runner.dense_key()
    model = runner.new_model()
    with store.lock("dense", key):
        if store.has("dense", key):
            try:
                meta, tensors = store.load("dense", key)
                load_model_tensors(model, tensors, "the cached dense model")
                runner.stages.cached["dense"] = True
                runner.say(f"dense model: reusing the cached one ({store.dir('dense', key)})")
                return model.to(runner.device).eval(), meta
            except CorruptArtifact as exc:
                runner.warn(f"dense model: cache entry is corrupt ({exc}); training it again")
                store.discard("dense", key)
        runner.stages.cached["dense"] = False
        if cfg.dense_checkpoint:
            model.load_state_dict(state)
            meta = {
                "source": "checkpoint",
                "path": str(cfg.dense_checkpoint),
                "input_normalization": normalization,
            }
        else:
            meta = train_dense(runner, model, data, key)
        meta = store.save("dense", key, meta, model_tensors(model))
    return model.to(runner.device).eval(), meta


def train_dense(runner, model: nn.Module, data: DataSplits, key: str) -> dict:
    """Adversarial training by the suite's recipe, resumable per epoch, with its plateau rule."""
    recipe, suite, store, seed = runner.suite.dense, runner.suite, runner.store, runner.cfg.seed
    torch.manual_seed(seed)
    model = model.to(runner.device)
    # re-initialise from the seed so the init does not depend on what ran before
    model.load_state_dict(runner.new_model().state_dict())
    loader = BatchLoader(
        data.train, recipe.batch_size, shuffle=True, seed=seed, augment=recipe.augment
    )
    attack, meter, optimizer = recipe_parts(model, recipe, suite.threat, len(data.train))
    partial, best_key = f"{key}-partial", f"{key}-best"
    start, watch_state = 0, None
    if store.has("dense", partial):
        try:
            pmeta, tensors = store.load("dense", partial)
            load_model_tensors(model, tensors, "the dense training checkpoint")
            restore_optimizer(optimizer, tensors, pmeta["optimizer"])
            start, meter.passes = pmeta["epoch"] + 1, pmeta["passes"]
            watch_state = pmeta.get("plateau")
            runner.say(f"dense model: resuming training at epoch {start + 1}/{recipe.epochs}")
        except (CorruptArtifact, RbenchError, KeyError, ValueError) as exc:
            runner.warn(f"dense model: ignoring an unusable training checkpoint ({exc})")
            start, watch_state = 0, None
    rule = recipe.plateau
    watch = PlateauWatch(rule, watch_state) if rule is not None else None
    if start == 0:
        until = (
            f", until validation PGD accuracy plateaus (patience {rule.patience})" if rule else ""
        )
        runner.say(
            f"dense model: adversarial training, at most {recipe.epochs} epochs{until} "
            f"(PGD-{attack.steps}, {suite.threat})"
        )
    watch_from = full_eps_epoch(recipe)
    stopped = {"epoch": recipe.epochs - 1}

    def end_of_epoch(epoch: int, stats: dict) -> bool:
        stop, note = False, ""
        if watch is not None and epoch >= watch_from:
            acc = validation_robust_accuracy(model, data.val, attack, rule.n_val, seed)
            best, stop = watch.update(epoch, acc)
            if best:
                store.save("dense", best_key, {"epoch": epoch}, model_tensors(model))
            note = f", validation PGD acc {acc:.3f}{' (best)' if best else ''}"
        tensors, ometa = optimizer_tensors(optimizer)
        pmeta = {"epoch": epoch, "passes": meter.passes, "optimizer": ometa}
        if watch is not None:
            pmeta["plateau"] = watch.state()
        store.save("dense", partial, pmeta, {**model_tensors(model), **tensors})
        runner.say(
            f"  dense epoch {epoch + 1}/{recipe.epochs}: loss {stats['loss']:.3f}, "
            f"adversarial train acc {stats['accuracy']:.3f}{note}"
        )
        if stop:
            stopped["epoch"] = epoch
        return stop

    if watch is not None and watch.stale >= rule.patience:  # killed after its last epoch
        stopped["epoch"] = start - 1
    else:
        fit_recipe(
            model,
            loader,
            recipe,
            attack=attack,
            meter=meter,
            optimizer=optimizer,
            seed=seed,
            on_epoch_end=end_of_epoch,
            bar=None if runner.cfg.quiet else "dense adversarial training",
            start_epoch=start,
        )
    meta = {
        "source": "trained",
        "epochs": recipe.epochs,
        "epochs_trained": stopped["epoch"] + 1,
        "compute_epochs": meter.used_epochs,
    }
    if watch is not None and watch.best_epoch >= 0:
        _, tensors = store.load("dense", best_key)
        load_model_tensors(model, tensors, "the best dense epoch")
        meta["plateau"] = {
            "rule": {"patience": rule.patience, "min_delta": rule.min_delta, "n_val": rule.n_val},
            "best_epoch": watch.best_epoch + 1,
            "best_val_pgd": watch.best,
            "curve": watch.curve,
        }
        runner.say(
            f"dense model: stopped after epoch {stopped['epoch'] + 1}; keeping epoch "
            f"{watch.best_epoch + 1} (validation PGD acc {watch.best:.3f})"
        )
        store.discard("dense", best_key)
    store.discard("dense", partial)
    return meta
