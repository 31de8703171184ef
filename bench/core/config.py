"""A run's configuration and the checks on it that need no data: what `rbench run` parses into,
validated before any compute is spent."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from rbench.core.errors import RbenchError
from rbench.core.fields import Range, check_number
from rbench.core.suites import DEFAULT_SUITE


def default_cache_dir() -> Path:
    return Path(os.environ.get("RBENCH_CACHE", Path.home() / ".cache" / "rbench"))


def _declared(default, spec: str, what: str):
    """A RunConfig field with its range (rbench.core.fields notation) and its option's name."""
    return field(default=default, metadata={"range": spec, "option": what})


@dataclass(frozen=True)
class RunConfig:
    method: str
    ratio: float = field(metadata={"range": "[1, inf)", "option": "--ratio"})
    suite: str = DEFAULT_SUITE
    seed: int = _declared(0, f"[0, {2**31 - 1}]", "--seed")
    device: str = "auto"
    data_root: str | None = None
    opts: tuple[tuple[str, str], ...] = ()
    protocol: str | None = None
    # compression budget override, AT-epochs (the suites' budgets are 1 to 10)
    epochs: float | None = _declared(None, "[0, 1e4]", "--epochs")
    dense_checkpoint: str | None = None
    results_dir: str = "results"
    cache_dir: str | None = None
    quiet: bool = False
    shard: tuple[int, int] | None = None  # (i, n): compute only AutoAttack chunk i of every n
    tuning: str | None = None  # folder of tuning records (rbench tune) whose choice to apply
    ratio_requested: str | None = None  # --ratio as typed (None: repr(ratio)), for the record
    input_normalization: str | None = None  # of --dense-checkpoint: "none", "suite" or None


NORMALIZATIONS = ("none", "suite")


def check_number_option(name: str, value, text: str | None = None) -> None:
    """One value of the RunConfig field `name` against its declaration (for lists of them, such
    as `rbench sweep --seeds`)."""
    (f,) = [f for f in fields(RunConfig) if f.name == name]
    if f.type in ("int", int) and not isinstance(value, int):
        raise RbenchError(f"{f.metadata['option']} must be an integer, got {text or value!r}")
    check_number(value, Range.of(f.metadata["range"]), f.metadata["option"], text)


def _check_number_fields(cfg: RunConfig) -> None:
    for f in fields(cfg):
        spec, value = f.metadata.get("range"), getattr(cfg, f.name)
        if spec is None or value is None:
            continue
        what = f.metadata["option"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RbenchError(f"{what} must be a number, got {value!r}")
        if f.type in ("int", int) and not isinstance(value, int):
            raise RbenchError(f"{what} must be an integer, got {value!r}")
        check_number(
            value, Range.of(spec), what, cfg.ratio_requested if f.name == "ratio" else None
        )


def _check_paths(cfg: RunConfig) -> None:
    for what, path in (("--results-dir", cfg.results_dir), ("--cache-dir", cfg.cache_dir)):
        if (
            path is not None
            and Path(path).expanduser().exists()
            and not Path(path).expanduser().is_dir()
        ):
            raise RbenchError(f"{what} '{path}' is a file, not a folder")
    if cfg.tuning is not None and not Path(cfg.tuning).expanduser().is_dir():
        raise RbenchError(f"--tuning '{cfg.tuning}' is not a folder")
    if cfg.dense_checkpoint is not None:
        path = Path(cfg.dense_checkpoint).expanduser()
        if path.is_dir():
            raise RbenchError(f"checkpoint '{path}' is a folder, not a checkpoint file")
        if not path.is_file():
            raise RbenchError(f"checkpoint '{path}' does not exist")
    if cfg.input_normalization is not None:
        if cfg.input_normalization not in NORMALIZATIONS:
            raise RbenchError(
                f"--input-normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got '{cfg.input_normalization}'"
            )
        if cfg.dense_checkpoint is None:
            raise RbenchError("--input-normalization applies only with --dense-checkpoint")


def check_run_config(cfg: RunConfig) -> None:
    """Every check of a run's options that needs neither data nor a model, in one place: the
    declared ranges of the numeric fields, the shard, and the paths named (the data root is
    checked against the suite's dataset, `rbench.data.datasets.check_data_root`). Runs before
    any compute and creates nothing."""
    _check_number_fields(cfg)
    if cfg.shard is not None and not (cfg.shard[1] >= 1 and 0 <= cfg.shard[0] < cfg.shard[1]):
        raise RbenchError(f"--shard must be i/n with 0 <= i < n, got {cfg.shard[0]}/{cfg.shard[1]}")
    _check_paths(cfg)


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


def check_ratio(ratio: float, text: str | None = None) -> None:
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise RbenchError(f"--ratio must be a finite number >= 1, got {text or ratio}")


def check_writable(directory: Path) -> None:
    """Refuse a folder that cannot be written, leaving nothing behind: the folders it had to
    create for the probe are removed again (the stage that writes creates them for real)."""
    directory = Path(directory).expanduser()
    missing, created = [], []
    parent = directory
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
                created.append(folder)
            except FileExistsError:
                pass  # another run made it meanwhile: not ours to remove
        with tempfile.TemporaryFile(dir=directory):  # nameless on Linux: nothing left on a kill
            pass
    except OSError as exc:
        raise RbenchError(f"cannot write to '{directory}' ({exc.strerror or exc})") from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # something was written into it meanwhile
                folder.rmdir()


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
