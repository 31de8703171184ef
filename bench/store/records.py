"""One JSON record per run (design.md 2): config, budget requested and measured, metrics,
diagnostics, timings, compute, environment fingerprint and hashes. Schema-validated, written
atomically, and only after every stage succeeded."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import jsonschema

from rbench.core.errors import RbenchError
from rbench.store.cache import atomic_write_json, content_hash
from rbench.store.points import BASE64, ENCODING, POINT_KINDS
from rbench.store.provenance import environment

K = TypeVar("K")

SCHEMA_ID = "rbench.record/2"
NUMBER_TEXT = r"^\s*[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"  # a ratio as typed

_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 10**12}
_ACC = {
    "type": "object",
    "required": ["accuracy", "correct", "n", "ci95"],
    "properties": {
        "accuracy": _UNIT,
        "correct": _COUNT,
        "n": _COUNT,
        "ci95": {"type": "array", "items": _UNIT, "minItems": 2, "maxItems": 2},
    },
}
_EPOCHS = {"type": "number", "minimum": 0, "maximum": 1e4}  # RunConfig's range of --epochs

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
        "accuracy": {"type": "array", "items": _UNIT},
        "area": _UNIT,
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
                "version": {"type": "integer", "minimum": 1},
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
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "protocol": {
            "type": "object",
            "required": ["name", "n_eval", "autoattack"],
            "properties": {"n_eval": {"type": "integer", "minimum": 1, "maximum": 10**7}},
        },
        "budget": {
            "type": "object",
            "required": ["ratio", "epochs"],
            "properties": {
                "ratio": {"type": "number", "minimum": 1},
                # the --ratio text as typed (absent from records before it was kept)
                "ratio_requested": {"type": "string", "pattern": NUMBER_TEXT, "maxLength": 40},
                "epochs": _EPOCHS,
            },
        },
        "compression": {
            "type": "object",
            "required": ["n_dense", "n_stored", "ratio", "macs_ratio", "per_layer"],
            "properties": {
                "n_dense": {**_COUNT, "minimum": 1},
                "n_stored": _COUNT,
                "ratio": {"type": "number", "exclusiveMinimum": 0},
                "macs_ratio": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "per_layer": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["dense", "stored"],
                        "properties": {"dense": _COUNT, "stored": _COUNT},
                    },
                },
            },
        },
        "compute": {
            "type": "object",
            "required": ["used_epochs", "budget_epochs"],
            "properties": {"used_epochs": _EPOCHS, "budget_epochs": _EPOCHS},
        },
        "metrics": {
            "type": "object",
            "required": ["clean", "pgd", "autoattack", "points", "security_curve"],
            "properties": {
                "clean": _ACC,
                "clean_eval_points": _ACC,
                "pgd": _ACC,
                "pgd_margin": _ACC,
                "autoattack": _ACC,
                "eps_sweep_pgd10": {"type": "object", "additionalProperties": _UNIT},
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


def _finite_number(checker, instance) -> bool:
    return jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(instance, "number") and (
        not isinstance(instance, float) or math.isfinite(instance)
    )


# "type": "number" means a finite number: NaN and infinities (which JSON cannot even write) fail
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number),
)
_VALIDATOR = _Validator(RECORD_SCHEMA)


def nonfinite(obj, where: str = "") -> Iterator[str]:
    """The paths of every NaN or infinite float anywhere in `obj`."""
    if isinstance(obj, float) and not math.isfinite(obj):
        yield where or "the top level"
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from nonfinite(value, f"{where}/{key}" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from nonfinite(value, f"{where}/{i}" if where else str(i))


def schema_errors(record) -> list[tuple[str, str]]:
    """(where, message) for every violation of RECORD_SCHEMA and every non-finite number."""
    out = [
        ("/".join(str(p) for p in e.absolute_path) or "the top level", e.message)
        for e in sorted(_VALIDATOR.iter_errors(record), key=lambda e: [str(p) for p in e.path])
    ]
    reported = {where for where, _ in out}
    out += [(w, "is not a finite number") for w in nonfinite(record) if w not in reported]
    return out


def validate_record(record: dict) -> None:
    """Raise RbenchError at the first violation of the schema (a finite number where it says
    number, within its range) or at the first NaN or infinity anywhere."""
    errors = schema_errors(record)
    if errors:
        where, message = errors[0]
        raise RbenchError(f"record fails the schema at {where}: {message}")


def finite_or_text(obj):
    """Free-form sections (a method's report) as JSON can hold them: a NaN or infinite float
    becomes its text ('nan', 'inf'), so the record says what happened and stays valid."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: finite_or_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_text(v) for v in obj]
    return obj


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
        "budget": {
            "ratio": runner.budget.ratio,
            "ratio_requested": cfg.ratio_requested or repr(float(cfg.ratio)),
            "epochs": runner.budget.epochs,
        },
        "compression": compression,
        "compute": {
            "used_epochs": compress_meta["compute_epochs"],
            "budget_epochs": runner.budget.epochs,
            "dense_reused": runner.stages.cached.get("dense", False),
        },
        "dense": {k: v for k, v in runner.dense_meta.items() if k != "tensors_sha256"},
        "tuning": runner.tuning,
        "metrics": metrics,
        "extra_metrics": finite_or_text(compress_meta.get("method_report", {})),
        "flags": flags,
        "unreliable": any(f in UNRELIABLE for f in flags),
        "diagnostics": diagnostics,
        "timings": runner.stages.timings,
        "latency": runner.latency,
        "cache": dict(keys),
        "environment": environment(runner.device, method),
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


def ratio_label(ratio: float) -> str:
    """A ratio as short as it can be written without being mistaken for another: '16', '2.5',
    but '16.0000001' (never rounded to '16')."""
    short = f"{float(ratio):g}"
    return short if float(short) == float(ratio) else repr(float(ratio))


def record_stem(variant: str, ratio: float, seed) -> str:
    """The file name of a record up to its run id: <variant>-r<ratio>-s<seed>-."""
    return f"{_component(variant)}-r{ratio_label(ratio)}-s{_component(seed)}-"


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


def dense_models_by_stage(records: Iterable[tuple[K, dict]]) -> dict[str, dict[str, list[K]]]:
    """{dense stage key: {dense model sha256: [keys of the records that compressed it]}}.

    Every record of one dense stage (suite, recipe, seed) must have compressed one set of dense
    weights for the board's pairing to compare methods; `rbench validate` reports a stage with
    several, the leaderboard keeps its majority. Both read this one grouping.
    """
    stages: dict[str, dict[str, list[K]]] = {}
    for key, record in records:
        h = record["hashes"]
        stages.setdefault(h["dense_stage_key"], {}).setdefault(h["dense"], []).append(key)
    return stages
