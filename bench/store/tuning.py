"""Tuning records: what `rbench tune` chose for a method on a suite, and how (rbench.tune).

`leaderboard/tuning/<suite>/<method>.json` holds the rule, every grid point's validation scores,
the choice and the compute the search spent; a run given the folder applies the choice and copies
this summary into its record.
"""

from __future__ import annotations

from pathlib import Path

from rbench.core.errors import RbenchError
from rbench.core.registry import Method
from rbench.core.suites import Suite
from rbench.store.cache import content_hash
from rbench.store.safejson import parse_data

SCHEMA = "rbench.tuning/1"


def tuning_path(folder: Path | str, suite: str, method: str) -> Path:
    return Path(folder) / suite / f"{method}.json"


def read_tuning(folder: Path | str, suite: Suite, method_cls: type[Method]) -> dict | None:
    """The tuning record of a method on a suite, checked, or None where the folder has none."""
    path = tuning_path(folder, suite.name, method_cls.name)
    if not path.is_file():
        return None
    try:
        record = parse_data(path.read_text(encoding="utf-8"))
        ok = (
            record.get("schema") == SCHEMA
            and record["suite"] == {"name": suite.name, "version": suite.version}
            and record["method"] == method_cls.name
            and isinstance(record["chosen"], (int, float))
            and record["chosen"] > 0
            and list(record["fields"]) == list(method_cls.tuned_fields())
        )
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise RbenchError(
            f"tuning record '{path}' is unreadable or is not for {method_cls.name} on "
            f"{suite.name} v{suite.version}; run `rbench tune` again"
        )
    return {
        "file": str(path),
        "sha256": content_hash(record, 64),
        "fields": record["fields"],
        "chosen": record["chosen"],
        "rule": record["rule"],
        "ratio": record["ratio"],
        "seed": record["seed"],
        "compute_epochs": record["compute_epochs"],
        "grid": [{k: p[k] for k in ("value", "val_pgd", "val_clean")} for p in record["grid"]],
    }
