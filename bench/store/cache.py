"""The artifact cache: one directory per (stage, content hash), written atomically, verified by
sha256 on load, guarded by a file lock so concurrent runs neither corrupt nor duplicate work.

Models are stored as safetensors plus a JSON sidecar (the structure needed to rebuild factorised
layers, metadata, and the sha256 of the tensor file). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from rbench.core.errors import RbenchError


def canonical_json(obj) -> str:
    """Sorted keys, no whitespace, floats by repr: the text that content hashes are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see old or new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Atomically save tensors as safetensors; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, tmp)
        digest = sha256_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def load_tensors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load safetensors, refusing a file whose sha256 differs from the recorded one."""
    path = Path(path)
    if sha256 is not None and sha256_file(path) != sha256:
        raise CorruptArtifact(f"'{path}' does not match its recorded sha256")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CorruptArtifact(f"'{path}' is not a readable safetensors file ({exc})") from None


class CorruptArtifact(RbenchError):
    """A cached or supplied file that is truncated, altered or unreadable."""


class Store:
    """Artifacts under `root/<stage>/<key>/`. A directory counts only once its `meta.json` exists,
    and `meta.json` is written last, so a crash leaves an incomplete directory that is redone."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    @contextmanager
    def lock(self, stage: str, key: str):
        path = self.root / "locks" / f"{stage}-{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path)):
            yield

    def has(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / "meta.json").is_file()

    def save(
        self, stage: str, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None
    ) -> dict:
        d = self.dir(stage, key)
        meta = dict(meta)
        if tensors is not None:
            meta["tensors_sha256"] = save_tensors(d / "tensors.safetensors", tensors)
        atomic_write_json(d / "meta.json", meta)
        return meta

    def load(self, stage: str, key: str, with_tensors: bool = True):
        """(meta, tensors or None); raises CorruptArtifact when anything fails verification."""
        d = self.dir(stage, key)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptArtifact(f"'{d / 'meta.json'}' is unreadable ({exc})") from None
        tensors = None
        if with_tensors and "tensors_sha256" in meta:
            tensors = load_tensors(d / "tensors.safetensors", meta["tensors_sha256"])
        return meta, tensors

    def discard(self, stage: str, key: str) -> None:
        """Remove an entry: first its meta.json (so it stops counting), then its files."""
        d = self.dir(stage, key)
        (d / "meta.json").unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
