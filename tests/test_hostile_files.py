"""Hostile files: paths built from records cannot leave the results directory (names with `..`,
absolute paths, links), `rbench validate` and `rbench leaderboard` open nothing a record names and
write only their own output, and bench/ and methods/ read configs and records as data only (no
code-running loaders, `torch.load` only with weights_only=True)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from test_validate import valid_record  # a consistent hand-built record (tests/ is on sys.path)

from rbench.core.errors import RbenchError
from rbench.store.records import record_path

ROOT = Path(__file__).resolve().parents[1]


def hostile_record(
    suite: str, method: str, variant: str = "harness", seed=0, run_id="0123456789abcdef"
) -> dict:
    """The fields `record_path` builds a path from (the rest of a record plays no part)."""
    return {
        "suite": {"name": suite},
        "method": {"name": method, "variant": variant},
        "budget": {"ratio": 4.0},
        "seed": seed,
        "run_id": run_id,
    }


HOSTILE = [
    ("../../outside", "magnitude", "harness", 0, "0" * 16),
    ("digits", "../../../etc/passwd", "harness", 0, "0" * 16),
    ("/etc", "/tmp/abs", "/root/x", 0, "0" * 16),
    ("digits", "magnitude", "../../../../escape", 0, "0" * 16),
    ("digits\\..\\..", "C:\\windows", "harness", 0, "0" * 16),
    ("..", "magnitude", "harness", 0, "0" * 16),
    ("digits", "..", "harness", 0, "0" * 16),
    ("", ".", "", 0, "0" * 16),
    ("digits", "magnitude", "harness", "/../../x", "/../../../../tmp/evil"),
]


@pytest.mark.parametrize("suite,method,variant,seed,run_id", HOSTILE)
def test_record_path_stays_inside_the_results_directory(
    tmp_path, suite, method, variant, seed, run_id
):
    results = tmp_path / "results"
    path = record_path(results, hostile_record(suite, method, variant, seed, run_id))
    assert path.parent.parent.parent == results.resolve()  # <suite>/<method>/<file>


def test_record_path_refuses_a_linked_folder_that_leads_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "digits").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RbenchError, match="escapes the results directory"):
        record_path(results, hostile_record("digits", "magnitude"))


OPENED: list[str] | None = None  # paths opened while a test records them (audit hook below)


def _audit(event: str, args: tuple) -> None:
    if event == "open" and OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside `opened_paths`


@contextlib.contextmanager
def opened_paths():
    """Every file path the process opens inside the block (Python's "open" audit event)."""
    global OPENED
    OPENED = []
    try:
        yield OPENED
    finally:
        OPENED = None


def test_validate_reports_hostile_names_and_opens_nothing(tmp_path, cli):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    before = secret.stat().st_mtime_ns
    bad = tmp_path / "records" / "bad.json"
    bad.parent.mkdir()
    record = valid_record()
    record["suite"]["name"] = "../../secret"
    record["method"]["name"] = str(secret)
    bad.write_text(json.dumps(record))
    with opened_paths() as opened:
        code, out, _ = cli("validate", str(bad.parent))
    assert str(bad) in opened and not any("secret" in p for p in opened)
    assert code == 2
    assert "schema: at method/name" in out and "schema: at suite/name" in out
    assert secret.stat().st_mtime_ns == before and secret.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.json", "records", "secret.json"]


def test_leaderboard_skips_hostile_records_and_writes_only_its_output(tmp_path):
    from rbench.report.leaderboard import build

    records = tmp_path / "records"
    records.mkdir()
    record = valid_record()
    record["suite"]["name"] = "../../../pwned"
    (records / "r.json").write_text(json.dumps(record))
    _, loaded = build([records], tmp_path / "out", plots=False)
    assert loaded.records == [] and len(loaded.skipped) == 1
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {
        "records/r.json",
        "out/LEADERBOARD.md",
        "out/leaderboard.csv",
        "out/leaderboard.json",
        "out/index.html",  # the web page (rbench.report.html)
    }


# Calls that could run code or build objects from a file's content. JSON (json.loads) and
# safetensors are the only readers; torch.load is allowed only with weights_only=True.
CODE_LOADERS = {
    "eval",
    "exec",
    "compile",
    "pickle.load",
    "pickle.loads",
    "marshal.load",
    "marshal.loads",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "numpy.load",
    "np.load",
    "shelve.open",
}


UNSAFE = {"pickle", "marshal", "dill", "joblib", "shelve", "yaml"}  # `from X import load` too


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    # a chain that does not start at a plain name (`make().eval()`) is a method call, not a builtin
    parts.append(f.id if isinstance(f, ast.Name) else "<expr>")
    return ".".join(reversed(parts))


def test_configs_and_records_are_parsed_as_data_only():
    sources = sorted((ROOT / "bench").rglob("*.py")) + sorted((ROOT / "methods").rglob("*.py"))
    assert (ROOT / "bench" / "cli" / "run.py") in sources and len(sources) > 20
    found = []
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE:
                found.append(f"{source.relative_to(ROOT)}:{node.lineno} from {node.module} import")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            where = f"{source.relative_to(ROOT)}:{node.lineno} {name}"
            if name in CODE_LOADERS:
                found.append(where)
            if name == "torch.load" and not any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value
                for k in node.keywords
            ):
                found.append(where + " without weights_only=True")
    assert found == []
