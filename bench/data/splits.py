"""The resident splits of a dataset and their batches.

Small datasets live in memory as tensors and are batched by `BatchLoader`, which reshuffles with a
generator seeded by (seed, epoch): an epoch's batches depend only on those two numbers, so a run
resumed at epoch e sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rbench.core.suites import DatasetInfo


@dataclass
class Split:
    """Images (N, C, H, W) as uint8 in 0..255 or float in [0, 1], labels, and stable ids."""

    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def images(self, index: torch.Tensor | slice) -> torch.Tensor:
        x = self.x[index]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def head(self, n: int) -> Split:
        """The first n points (the evaluation protocol's robust-accuracy points)."""
        return self.part(0, n)

    def part(self, start: int, stop: int) -> Split:
        return Split(self.x[start:stop], self.y[start:stop], self.ids[start:stop])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.ids.to(device))


@dataclass
class DataSplits:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split | None  # None in what a method is lent: model selection never reads the test split


class BatchLoader:
    """Batches of a resident split: float images in [0,1] and labels, on the split's device."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: str = "none",
        drop_last: bool = False,
    ) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.augment, self.drop_last, self.epoch = augment, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        n = len(self.split)
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.split), self.split.y.device
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(device, non_blocking=True)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.split.images(idx)
            if self.augment == "crop-flip":
                x = crop_flip(x, gen)
            yield x, self.split.y[idx]


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, done on the tensor's own device. The
    offsets are drawn on the CPU (the same ones on every device) and copied without blocking, so
    the host never waits for the GPU here."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device, non_blocking=True)
    return torch.where(flip[:, None, None, None], out.flip(3), out)
