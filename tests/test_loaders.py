"""The real loading code reads small files written in the datasets' real on-disk formats."""

import gzip  # noqa: F401  (documents that the raw, uncompressed idx layout is what is read)
import pickle
import struct

import numpy as np
import pytest
import torch

from rbench.core.errors import RbenchError
from rbench.data.datasets import load_data
from rbench.data.splits import BatchLoader


def write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, dtype 0x08, ndim), big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root, folder="MNIST", n_train=5200, n_test=30):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path, name, folder):
    make_mnist(tmp_path, folder)
    data = load_data(name, tmp_path)
    assert data.train.x.shape == (200, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert len(data.val) == 5000 and len(data.test) == 30
    x, y = next(iter(BatchLoader(data.test, 16)))
    assert x.shape == (16, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert set(data.train.ids.tolist()).isdisjoint(data.val.ids.tolist())


def test_truncated_mnist_file_is_a_clear_error(tmp_path):
    make_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(RbenchError, match="could not read mnist"):
        load_data("mnist", tmp_path)


def _cifar_batch(path, n, rng, label_key):
    batch = {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, 10, n).tolist(),
    }
    path.write_bytes(pickle.dumps(batch))


def test_cifar10_python_batches(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 1100, rng, "labels")
    _cifar_batch(folder / "test_batch", 50, rng, "labels")
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )
    # torchvision checks the md5 sums of the real files; these are small stand-ins
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda path, md5=None: True)
    data = load_data("cifar10", tmp_path)
    assert data.train.x.shape == (500, 3, 32, 32) and len(data.val) == 5000
    assert data.test.x.shape == (50, 3, 32, 32)
    # channel-first conversion keeps each image's pixels: row 0 of the first test image, red
    first = pickle.loads((folder / "test_batch").read_bytes())["data"][0]
    assert torch.equal(data.test.x[0, 0, 0], torch.tensor(first[:32]))


def test_svhn_mat_files(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets as tvd

    rng = np.random.default_rng(0)
    for split, n in [("train", 5100), ("test", 20)]:
        scipy.io.savemat(
            tmp_path / f"{split}_32x32.mat",
            {
                "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": rng.integers(1, 11, (n, 1)).astype(np.uint8),
            },
        )
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    data = load_data("svhn", tmp_path)
    assert data.train.x.shape == (100, 3, 32, 32) and len(data.test) == 20
    assert data.test.y.max() <= 9  # torchvision maps label 10 to digit 0


def test_image_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in [("train", 12), ("val", 2)]:
        for cls in ["n01", "n02"]:
            d = tmp_path / "imagenet" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(
                    d / f"{i}.JPEG"
                )
    data = load_data("imagenet", tmp_path)
    assert len(data.val) == 20 and len(data.train) == 4 and len(data.test) == 4
    x, y = next(iter(BatchLoader(data.test, 4)))
    assert x.shape == (4, 3, 224, 224) and sorted(y.tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn", "imagenet"])
def test_missing_data_says_what_to_download(tmp_path, name):
    with pytest.raises(RbenchError, match="expected"):
        load_data(name, tmp_path)
    with pytest.raises(RbenchError, match="needs --data-root"):
        load_data(name, None)


def test_embedded_splits_are_fixed_and_disjoint():
    a, b = load_data("mnist5k"), load_data("mnist5k")
    assert torch.equal(a.test.ids, b.test.ids)
    assert (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000)
    ids = [set(s.ids.tolist()) for s in (a.train, a.val, a.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    d = load_data("digits")
    assert (len(d.train), len(d.val), len(d.test)) == (1197, 200, 400)
    assert float(d.train.x.min()) >= 0 and float(d.train.x.max()) <= 1
