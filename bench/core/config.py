"""A run's configuration and the checks on it that need no data: what `rbench run` parses into,
validated before any compute is spent."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rbench.core.errors import RbenchError
from rbench.core.suites import DEFAULT_SUITE


def default_cache_dir() -> Path:
    return Path(os.environ.get("RBENCH_CACHE", Path.home() / ".cache" / "rbench"))


@dataclass(frozen=True)
class RunConfig:
    method: str
    ratio: float
    suite: str = DEFAULT_SUITE
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    opts: tuple[tuple[str, str], ...] = ()
    protocol: str | None = None
    epochs: float | None = None  # compression budget override, AT-epochs
    dense_checkpoint: str | None = None
    results_dir: str = "results"
    cache_dir: str | None = None
    quiet: bool = False
    shard: tuple[int, int] | None = None  # (i, n): compute only AutoAttack chunk i of every n
    tuning: str | None = None  # folder of tuning records (rbench tune) whose choice to apply


@dataclass
class Stages:
    """What happened in each stage, for the record and for the user."""

    timings: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RbenchError("--device cuda was asked for but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise RbenchError(f"unknown device '{name}' (choose auto, cpu or cuda)")
    return torch.device(name)


def check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise RbenchError(f"--ratio must be a finite number >= 1, got {ratio}")


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".rbench-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RbenchError(f"cannot write to '{directory}' ({exc.strerror or exc})") from None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()):
        raise RbenchError(f"--shard expects I/N like 0/4, got '{text}'")
    return int(index), int(count)


def parse_opts(opts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RbenchError(f"--opt expects key=value, got '{item}'")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
