"""The artifact cache: one directory per (stage, content hash), written atomically, verified by
sha256 on load, guarded by a file lock so concurrent runs neither corrupt nor duplicate work.

Models are stored as safetensors plus a JSON sidecar (the structure needed to rebuild factorised
layers, metadata, and the sha256 of the tensor file). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
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


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
_TMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[^.]+\.tmp$")
STALE_AFTER_S = 3600.0  # a temporary file no live writer of this host owns, or this old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Remove the temporary files that a killed writer left in `folder` (the hidden
    `.<name>.<host>-<pid>.<random>.tmp` of `atomic_write_text` and `save_tensors`): those of a
    dead process of this host, and any older than STALE_AFTER_S (other hosts' and the untagged
    ones of earlier versions). Returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file()):
            continue
        tag = _TMP.match(entry.name)
        mine = tag is not None and tag["host"] == _HOST
        try:
            old = now - entry.stat().st_mtime > STALE_AFTER_S
            if (mine and int(tag["pid"]) != os.getpid() and not _alive(int(tag["pid"]))) or old:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # removed meanwhile, or not ours to remove
    return removed


def _temporary(path: Path) -> str:
    """A new temporary file beside `path`, named for its writer (see remove_stale_tmp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path.parent)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp"
    )
    os.close(fd)
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see old or new. A
    temporary file left by a killed writer is removed by the next write into the folder."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "w") as f:
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
    tmp = _temporary(path)
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
