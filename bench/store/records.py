"""One JSON record per run (design.md 2): config, budget requested and measured, metrics,
diagnostics, timings, compute, environment fingerprint and hashes. Schema-validated, written
atomically, and only after every stage succeeded."""

from __future__ import annotations

import platform
import re
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jsonschema

from rbench import __version__
from rbench.core.errors import RbenchError
from rbench.store.cache import atomic_write_json, content_hash
from rbench.store.points import BASE64, ENCODING, POINT_KINDS

SCHEMA_ID = "rbench.record/2"

_ACC = {
    "type": "object",
    "required": ["accuracy", "correct", "n", "ci95"],
    "properties": {
        "accuracy": {"type": "number", "minimum": 0, "maximum": 1},
        "correct": {"type": "integer", "minimum": 0},
        "n": {"type": "integer", "minimum": 0},
        "ci95": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    },
}

_POINTS = {  # which evaluated points were correct, one base64 bit string per attack (store.points)
    "type": "object",
    "required": ["encoding", "n", "clean", "pgd", "autoattack"],
    "properties": {
        "encoding": {"const": ENCODING},
        "n": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        **{k: {"type": "string", "pattern": BASE64.pattern} for k in POINT_KINDS},
    },
}
_CURVE = {  # robust accuracy against eps from a minimum-norm attack (evaluate.curves)
    "type": "object",
    "required": ["attack", "eps", "accuracy", "area", "median_norm", "n"],
    "properties": {
        "eps": {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 2},
        "accuracy": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}},
        "area": {"type": "number", "minimum": 0, "maximum": 1},
        "median_norm": {"type": ["number", "null"], "minimum": 0},
        "norms": {"type": "array", "items": {"type": ["number", "null"], "minimum": 0}},
    },
}

RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "schema",
        "run_id",
        "created",
        "suite",
        "method",
        "seed",
        "protocol",
        "budget",
        "compression",
        "compute",
        "metrics",
        "flags",
        "unreliable",
        "environment",
        "hashes",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "run_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "created": {"type": "string"},
        "suite": {
            "type": "object",
            "required": ["name", "version", "dataset", "arch", "threat"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
                "version": {"type": "integer"},
                "threat": {
                    "type": "object",
                    "required": ["norm", "eps"],
                    "properties": {
                        "norm": {"enum": ["Linf", "L2", "L1"]},
                        "eps": {"type": "string"},
                    },
                },
            },
        },
        "method": {
            "type": "object",
            "required": ["name", "kind", "variant", "citation", "config"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
                "variant": {"type": "string"},
                "config": {"type": "object"},
            },
        },
        "seed": {"type": "integer", "minimum": 0},
        "protocol": {"type": "object", "required": ["name", "n_eval", "autoattack"]},
        "budget": {
            "type": "object",
            "required": ["ratio", "epochs"],
            "properties": {
                "ratio": {"type": "number", "minimum": 1},
                "epochs": {"type": "number", "minimum": 0},
            },
        },
        "compression": {
            "type": "object",
            "required": ["n_dense", "n_stored", "ratio", "macs_ratio", "per_layer"],
            "properties": {
                "ratio": {"type": "number", "exclusiveMinimum": 0},
                "per_layer": {"type": "array"},
            },
        },
        "compute": {"type": "object", "required": ["used_epochs", "budget_epochs"]},
        "metrics": {
            "type": "object",
            "required": ["clean", "pgd", "autoattack", "points", "security_curve"],
            "properties": {
                "clean": _ACC,
                "clean_eval_points": _ACC,
                "pgd": _ACC,
                "autoattack": _ACC,
                "points": _POINTS,
                "security_curve": _CURVE,
            },
        },
        "dense": {"type": "object", "required": ["source"]},
        "tuning": {"type": ["object", "null"]},
        "flags": {"type": "object", "additionalProperties": {"type": "string"}},
        "unreliable": {"type": "boolean"},
        "diagnostics": {"type": "object"},
        "extra_metrics": {"type": "object"},
        "timings": {"type": "object"},
        "cache": {"type": "object"},
        "environment": {"type": "object", "required": ["rbench", "torch", "pyautoattack"]},
        "hashes": {
            "type": "object",
            "required": ["dense", "dense_stage_key", "compressed", "config"],
            "properties": {
                "dense": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "compressed": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
    },
}


def validate_record(record: dict) -> None:
    try:
        jsonschema.validate(record, RECORD_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise RbenchError(f"record fails the schema at {where}: {exc.message}") from None


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    import torch

    dev = str(device)
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    return {
        "rbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _pkg("torchvision"),
        "pyautoattack": _pkg("pyautoattack"),
        "foolbox": _pkg("foolbox"),
        "numpy": _pkg("numpy"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": dev,
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }


def build_record(*, runner, compression, compress_meta, metrics, flags, diagnostics, data) -> dict:
    from dataclasses import asdict

    from rbench.core.registry import nondefault
    from rbench.evaluate.accuracy import UNRELIABLE

    suite, cfg, method = runner.suite, runner.cfg, runner.method_cls
    keys = runner.stages.keys
    run_id = content_hash({"compress": keys["compress"], "evaluate": keys["evaluate"]})
    return {
        "schema": SCHEMA_ID,
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite": {
            "name": suite.name,
            "version": suite.version,
            "dataset": suite.dataset,
            "arch": suite.arch,
            "threat": asdict(suite.threat),
            "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        },
        "method": {
            "name": method.name,
            "kind": method.kind,
            "variant": runner.config.variant,
            "citation": method.citation,
            "config": asdict(runner.config),
            "config_nondefault": nondefault(runner.config),
        },
        "seed": cfg.seed,
        "protocol": asdict(runner.protocol),
        "budget": {"ratio": runner.budget.ratio, "epochs": runner.budget.epochs},
        "compression": compression,
        "compute": {
            "used_epochs": compress_meta["compute_epochs"],
            "budget_epochs": runner.budget.epochs,
            "dense_reused": runner.stages.cached.get("dense", False),
        },
        "dense": {k: v for k, v in runner.dense_meta.items() if k != "tensors_sha256"},
        "tuning": runner.tuning,
        "metrics": metrics,
        "extra_metrics": compress_meta.get("method_report", {}),
        "flags": flags,
        "unreliable": any(f in UNRELIABLE for f in flags),
        "diagnostics": diagnostics,
        "timings": runner.stages.timings,
        "latency": runner.latency,
        "cache": dict(keys),
        "environment": environment(runner.device),
        "hashes": {  # sha256 of the weights (safetensors files), and the dense stage's cache key
            "dense": runner.dense_meta.get("tensors_sha256"),
            "dense_stage_key": keys["dense"],
            "compressed": compress_meta.get("tensors_sha256"),
            "config": content_hash(asdict(runner.config)),
        },
    }


_SAFE = re.compile(r"[^a-z0-9_.-]")


def _component(name: str) -> str:
    """One path component from a record field: no separators, and never '', '.' or '..'."""
    safe = _SAFE.sub("_", str(name).lower())
    return "_" * max(len(safe), 1) if set(safe) <= {"."} else safe


def record_folder(results_dir: Path | str, suite: str, method: str) -> Path:
    """results/<suite>/<method>, names sanitised."""
    return Path(results_dir) / _component(suite) / _component(method)


def record_stem(variant: str, ratio: float, seed) -> str:
    """The file name of a record up to its run id: <variant>-r<ratio>-s<seed>-."""
    return f"{_component(variant)}-r{float(ratio):g}-s{_component(seed)}-"


def record_path(results_dir: Path, record: dict) -> Path:
    """results/<suite>/<method>/<variant>-r<ratio>-s<seed>-<run_id>.json (names sanitised, so a
    record can never place itself outside the results directory)."""
    folder = record_folder(results_dir, record["suite"]["name"], record["method"]["name"])
    stem = record_stem(record["method"]["variant"], record["budget"]["ratio"], record["seed"])
    path = (folder / f"{stem}{_component(record['run_id'])}.json").resolve()
    if Path(results_dir).resolve() not in path.parents:
        raise RbenchError(f"record path '{path}' escapes the results directory")
    return path


def write_record(path: Path, record: dict) -> None:
    atomic_write_json(path, record)
