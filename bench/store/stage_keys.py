"""The content hashes that name each cached stage (design.md 2, "Runner"): a stage is reused only
when everything that could change its result hashes alike."""

from __future__ import annotations

import inspect
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from rbench.core.registry import Method, MethodConfig, nondefault
from rbench.core.suites import Protocol, Suite
from rbench.store.cache import content_hash, sha256_file
from rbench.train.trainer import resolve_precision

# Bump when a stage's code changes what it produces: old cache entries are then not reused.
STAGE_VERSIONS = {"dense": 2, "compress": 3, "evaluate": 2}


def method_code_hash(method_cls: type[Method]) -> str:
    """Hash of the file defining the method, so that editing a method invalidates its cached
    compressions (shared bench/ code changes still need a STAGE_VERSIONS bump)."""
    try:
        source = inspect.getsource(sys.modules[method_cls.__module__])
    except (OSError, TypeError, KeyError):  # defined interactively: no file to hash
        source = method_cls.__qualname__
    return content_hash(source, 16)


def dense_key(
    suite: Suite,
    seed: int,
    device: torch.device,
    checkpoint: str | None,
    normalization: str | None = None,
) -> str:
    if checkpoint:
        digest = sha256_file(Path(checkpoint).expanduser())
        key = {"checkpoint": digest, "arch": suite.arch, "dataset": suite.dataset}
        if normalization is not None:  # --input-normalization (absent: the keys of before)
            key["input_normalization"] = normalization
        return content_hash(key)
    return content_hash(
        {
            "stage": STAGE_VERSIONS["dense"],
            "suite": suite.name,
            "version": suite.version,
            "dataset": suite.dataset,
            "arch": suite.arch,
            "threat": asdict(suite.threat),
            "recipe": asdict(suite.dense),
            "seed": seed,
            # the dense stage trains at fit's "auto" precision; a non-fp32 one is another model
            **({"precision": p} if (p := resolve_precision("auto", device)) != "fp32" else {}),
        }
    )


def compress_key(
    dense: str, method_cls: type[Method], config: MethodConfig, suite: Suite, budget, seed: int
) -> str:
    return content_hash(
        {
            "stage": STAGE_VERSIONS["compress"],
            "dense": dense,
            "method": method_cls.name,
            "code": method_code_hash(method_cls),
            "config": nondefault(config),
            "finetune_lr": suite.finetune_lr,
            "ratio": budget.ratio,
            "epochs": budget.epochs,
            "seed": seed,
        }
    )


def evaluate_key(compress: str, protocol: Protocol, suite: Suite, seed: int) -> str:
    return content_hash(
        {
            "stage": STAGE_VERSIONS["evaluate"],
            "compress": compress,
            "protocol": asdict(protocol),
            "threat": asdict(suite.threat),
            "seed": seed,
        }
    )
