"""What the harness lends a method (design.md 2, "Context"): the data loaders, the device, the
threat model, seeded generators, the shared training loop and attack, the compute meter, and
progress reporting. Methods train only through it, so every method's compute is counted alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rbench.core.budget import Budget, ComputeMeter
from rbench.core.errors import RbenchError
from rbench.core.pgd import PGD
from rbench.core.progress import epoch_counter, epochs_text, note
from rbench.core.registry import SGDConfig
from rbench.core.suites import Suite
from rbench.data.splits import BatchLoader, DataSplits, Split
from rbench.train.trainer import LOSS_PASSES, Diverged, StepHooks, fit

COLLAPSE = 1.5  # training accuracy below this multiple of chance: the phase is at chance


class DivergenceWatch:
    """Whether a training phase ended at chance: the training accuracy of its last full epoch
    below 1.5 x chance (the loss is no guide: regularisers such as ADMM's penalty are in it)."""

    def __init__(self, tag: str, epochs: float, classes: int) -> None:
        self.tag, self.full, self.classes = tag, int(epochs + 1e-9), classes
        self.last: tuple[int, float] | None = None
        self.message: str | None = None

    def wrap(self, progress):
        def show(epoch: int, stats: dict) -> None:
            if epoch < self.full:
                self.last = (epoch, stats["accuracy"])
                if epoch == self.full - 1 and stats["accuracy"] < COLLAPSE / self.classes:
                    self.message = (
                        f"{self.tag}: training accuracy {stats['accuracy']:.3f} after epoch "
                        f"{epoch + 1} is at chance (below {COLLAPSE:g} / {self.classes})"
                    )
            progress(epoch, stats)

        return show


@dataclass
class Context:
    suite: Suite
    data: DataSplits  # splits already on `device`
    device: torch.device
    seed: int
    budget: Budget
    meter: ComputeMeter
    quiet: bool = False
    report: dict = field(default_factory=dict)  # what the method wants in its record
    diverged: list[str] = field(default_factory=list)  # training phases that diverged (record flag)

    @property
    def threat(self):
        return self.suite.threat

    @property
    def train_attack(self) -> PGD:
        """The suite's training attack (PGD-k at the suite's eps)."""
        return self.suite.dense.attack.pgd(self.suite.threat)

    def generator(self, tag: str) -> torch.Generator:
        """A generator seeded by the run's seed and a tag, independent of call order."""
        import zlib

        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(tag.encode()))

    def loader(
        self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None
    ) -> BatchLoader:
        data: Split = self._split(split)
        return BatchLoader(
            data,
            batch_size or self.suite.dense.batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle,
            seed=self.seed,
            augment=self.suite.dense.augment if split == "train" else "none",
        )

    def fit(
        self,
        model: nn.Module,
        *,
        epochs: float,
        lr: float,
        optimizer: str | torch.optim.Optimizer = "sgd",
        loss: str = "adv",
        hooks: StepHooks | None = None,
        batch_size: int | None = None,
        attack: PGD | None = None,
        tag: str = "fit",
        **kwargs,
    ) -> torch.optim.Optimizer:
        """Train `model` on the training split with the shared loop (train.fit), charging every
        forward-backward pass to the meter. `loss` is "adv" (PGD-AT), "ce", "mixed" or "trades"."""
        model.to(self.device)
        self.log(f"{tag}: {epochs_text(epochs)} epochs, loss {loss}, lr {lr:g}")
        watch = DivergenceWatch(tag, epochs, self.suite.data.num_classes)
        try:
            return fit(
                model,
                self.loader("train", batch_size),
                attack=(attack or self.train_attack) if loss != "ce" else None,
                meter=self.meter,
                epochs=epochs,
                lr=lr,
                optimizer=optimizer,
                loss=loss,
                hooks=hooks,
                seed=self.seed,
                progress=watch.wrap(self._epoch_progress(tag, epochs)),
                restore_on_divergence=True,
                **{"bar": None if self.quiet else tag, **kwargs},
            )
        except Diverged as exc:
            self.diverged.append(f"{tag}: {exc}")
            self.log(f"{tag}: {exc}; training stopped, the last finite weights are kept")
            return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        finally:
            if watch.message:
                self.diverged.append(watch.message)

    def fit_sgd(self, model: nn.Module, cfg: SGDConfig, **kwargs) -> torch.optim.Optimizer:
        """`fit` with SGD at the momentum, weight decay and batch size of a method's config."""
        return self.fit(
            model,
            optimizer="sgd",
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            **kwargs,
        )

    def affordable_epochs(
        self, share: float = 1.0, loss: str = "adv", attack_steps: int | None = None
    ) -> float:
        """Epochs of `loss` that `share` of the remaining budget pays for. An epoch of PGD-k AT
        costs 1 AT-epoch at the suite's k; TRADES, mixed and natural epochs cost more or less."""
        k = self.train_attack.steps
        steps = 0 if loss == "ce" else (k if attack_steps is None else attack_steps)
        per_epoch = (steps + LOSS_PASSES[loss]) / (k + 1)
        return max(0.0, share * self.meter.remaining_epochs() / per_epoch)

    def charge(self, samples: int, passes_per_sample: int) -> None:
        """For a method that makes forward-backward passes outside `fit`."""
        self.meter.charge(samples, passes_per_sample)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, split: str = "val") -> float:
        """Clean accuracy on a split (forward passes only: not charged)."""
        model.eval()
        data: Split = self._split(split)
        correct = 0
        for x, y in self.loader(split, batch_size=1000, shuffle=False):
            correct += int((model(x).argmax(1) == y).sum())
        return correct / max(len(data), 1)

    def robust_accuracy(self, model: nn.Module, split: str = "val") -> float:
        """PGD accuracy with the training attack on a split (charged like training passes)."""
        model.eval()
        data: Split = self._split(split)
        attack, correct = self.train_attack, 0
        gen = self.generator(f"robust-{split}")
        for x, y in self.loader(split, batch_size=500, shuffle=False):
            x_adv = attack.perturb(model, x, y, generator=gen)
            self.meter.charge(len(y), attack.steps)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
        return correct / max(len(data), 1)

    def _split(self, split: str) -> Split:
        if split not in ("train", "val"):
            raise RbenchError(f"a method may read the train and val splits, not '{split}'")
        return getattr(self.data, split)

    def log(self, message: str) -> None:
        if not self.quiet:
            note(f"  [{self.suite.name}] {message}")

    def _epoch_progress(self, tag: str, epochs: float):
        def show(epoch: int, stats: dict) -> None:
            self.log(
                f"{tag} epoch {epoch_counter(epoch, epochs)}: loss {stats['loss']:.3f}, "
                f"train acc {stats['accuracy']:.3f}, compute {self.meter.used_epochs:.2f} AT-epochs"
            )

        return show
