"""The input files the bad-input catalogue's cases need (tests/bad_input_cases.py): each maker
writes one kind of broken or foreign file into a case's own folder."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from conftest import new_digits_model
from safetensors.torch import save_file


def text_file(name: str, text: str) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        path = inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return make


def folder(name: str) -> Callable[[Path], None]:
    return lambda inputs: (inputs / name).mkdir(parents=True)


class Payload:
    """Unpickling this would create a file: a checkpoint that carries code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def code_pickle(inputs: Path) -> None:
    (inputs / "evil.pt").write_bytes(pickle.dumps({"weight": Payload(str(inputs / "pwned"))}))


def bare_network(inputs: Path) -> None:
    """The digits smallcnn's network alone, as code outside rbench saves it (no normalisation)."""
    torch.save(new_digits_model().net.state_dict(), inputs / "bare.pt")


def other_architecture(inputs: Path) -> None:
    from rbench.data.models import build_model

    torch.save(build_model("lenet300", (1, 8, 8), 10, (0.0,), (1.0,)).state_dict(), inputs / "l.pt")


def corrupt_safetensors(inputs: Path) -> None:
    (inputs / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")


def truncated_safetensors(inputs: Path) -> None:
    model = new_digits_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, inputs / "full.st")
    data = (inputs / "full.st").read_bytes()
    (inputs / "full.st").unlink()
    (inputs / "cut.safetensors").write_bytes(data[:-100])


def corrupt_idx(inputs: Path) -> None:
    """A torchvision MNIST folder whose four idx files are not idx files."""
    raw = inputs / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x99\x07 not an idx file")
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 4)


def nested(name: str, depth: int = 100_000) -> Callable[[Path], None]:
    return text_file(name, "[" * depth + "]" * depth)


def both(*makers):
    def make(inputs: Path) -> None:
        for maker in makers:
            maker(inputs)

    return make
