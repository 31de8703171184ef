"""`rbench validate`: check submitted record files against the schema and the protocol.

A record that reaches the leaderboard must be one the harness could have written: the schema of
`rbench.store.records`, a suite this rbench knows at the same version, a protocol that suite defines (with
its exact attack settings and n_eval), a measured ratio at least the requested one (within the
harness's slack of one element per layer, `rbench.core.budget.max_stored`), metrics consistent with
their own counts (accuracy == correct / n, the Wilson interval containing the estimate, AutoAttack
never above clean accuracy on the same points), per-point results that are exactly those counts
(and robust only where clean-correct), a security curve that falls with eps, the sanity flags its
numbers imply, compute within the budget, and its hashes.

Records are untrusted input. They are parsed as JSON data only (no NaN/Infinity constants, no
duplicate keys, at most `MAX_BYTES`); nothing named inside a record is opened or followed, and
symbolic links met while walking a directory are reported, not read.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

from rbench.core.budget import ComputeMeter, max_stored
from rbench.core.errors import RbenchError
from rbench.core.suites import SUITES
from rbench.evaluate.accuracy import UNRELIABLE, wilson_interval
from rbench.store.cache import content_hash
from rbench.store.points import record_points
from rbench.store.records import dense_models_by_stage, schema_errors
from rbench.store.safejson import UnsafeJSON, parse_data

MAX_BYTES = 16 * 1024 * 1024  # a real record is tens of kilobytes
MAX_LINE = 300  # characters of one problem line
_TOL = 1e-6  # float slack of numbers that went through JSON
_HEX = re.compile(r"^[0-9a-f]+$")


def load_record_file(path: Path) -> tuple[dict | None, list[str]]:
    """(record, []) or (None, [the reason it cannot be read as a record]). The size and the
    nesting depth are checked before the text is parsed (rbench.store.safejson)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, [f"file is {size} bytes, more than the {MAX_BYTES} a record may have"]
        record = parse_data(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [f"cannot be read ({exc.strerror or exc})"]
    except UnicodeDecodeError:
        return None, ["is not UTF-8 text"]
    except UnsafeJSON as exc:
        return None, [f"is not acceptable JSON: {exc}"]
    except json.JSONDecodeError as exc:
        return None, [f"is not valid JSON ({exc})"]
    if not isinstance(record, dict):
        return None, [f"holds a JSON {type(record).__name__}, not a record object"]
    return record, []


def record_files(paths: Iterable[str | Path]) -> Iterator[tuple[Path, list[str]]]:
    """(file, problems found before reading it) for every path given and every *.json below a
    directory given. Links inside directories are reported, never followed."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    if not name.endswith(".json"):
                        continue
                    found = Path(root) / name
                    if found.is_symlink():
                        yield found, ["is a symbolic link; submit records as regular files"]
                    else:
                        yield found, []
                for name in dirs:
                    if (Path(root) / name).is_symlink():
                        yield Path(root) / name, ["is a linked directory; it was not followed"]
        elif path.exists():
            yield path, []
        else:
            yield path, ["does not exist"]


def schema_problems(record: dict) -> list[str]:
    """Every violation of the schema `rbench.store.records.validate_record` checks (a finite
    number wherever it says number, within its range; no NaN or infinity anywhere), one line
    each (that function stops at the first)."""
    return [f"schema: at {where}: {message}" for where, message in schema_errors(record)]


# ------------------------------------------------------------------------- protocol checks


def _suite_problems(record: dict) -> list[str]:
    s = record["suite"]
    suite = SUITES.get(s["name"])
    if suite is None:
        return [f"suite: '{s['name']}' is not a suite of this rbench (see `rbench list suites`)"]
    out = []
    if s["version"] != suite.version:
        out.append(
            f"suite: '{suite.name}' is at version {suite.version}, the record has version "
            f"{s['version']}; rerun with the current suite"
        )
    for key, expected in (("dataset", suite.dataset), ("arch", suite.arch)):
        if s[key] != expected:
            out.append(f"suite: {key} is '{s[key]}', suite '{suite.name}' uses '{expected}'")
    threat = asdict(suite.threat)
    if {k: s["threat"].get(k) for k in threat} != threat:
        out.append(
            f"suite: threat model {s['threat'].get('norm')} eps={s['threat'].get('eps')!r} differs "
            f"from the suite's {suite.threat.norm} eps={suite.threat.eps!r}"
        )
    return out


def _protocol_problems(record: dict, require: str | None) -> list[str]:
    suite = SUITES.get(record["suite"]["name"])
    p = record["protocol"]
    if suite is None:
        return []
    names = [q.name for q in suite.protocols]
    if p["name"] not in names:
        return [
            f"protocol: suite '{suite.name}' has no protocol '{p['name']}' ({', '.join(names)})"
        ]
    out = []
    expected = json.loads(json.dumps(asdict(suite.protocol(p["name"]))))
    differing = sorted(k for k in expected if p.get(k) != expected[k])
    if differing:
        out.append(
            f"protocol: '{p['name']}' settings differ from the suite's in {', '.join(differing)}"
        )
    n_eval = expected["n_eval"]
    for name in ("pgd", "autoattack", "clean_eval_points"):
        entry = record["metrics"].get(name)
        if isinstance(entry, dict) and entry.get("n") != n_eval:
            out.append(
                f"metrics: {name} was measured on n={entry.get('n')} points, the protocol's "
                f"n_eval is {n_eval}"
            )
    if require is not None and p["name"] != require:
        out.append(f"protocol: is '{p['name']}', this submission needs '{require}'")
    return out


def _ratio_problems(record: dict) -> list[str]:
    c, requested = record["compression"], record["budget"]["ratio"]
    rows = c["per_layer"]
    n_dense, n_stored = int(c["n_dense"]), int(c["n_stored"])
    out = []
    if sum(int(r["dense"]) for r in rows) != n_dense:
        out.append("compression: the per-layer dense sizes do not add up to n_dense")
    if sum(int(r["stored"]) for r in rows) != n_stored:
        out.append("compression: the per-layer stored counts do not add up to n_stored")
    if n_stored <= 0 or not math.isclose(c["ratio"], n_dense / n_stored, rel_tol=_TOL):
        out.append(
            f"compression: ratio {c['ratio']} is not n_dense / n_stored = {n_dense}/{n_stored}"
        )
    typed = record["budget"].get("ratio_requested")
    if typed is not None and float(typed) != requested:
        out.append(f"budget: ratio {requested!r} is not the ratio requested, '{typed}'")
    n_layers = sum(1 for r in rows if int(r["dense"]))
    limit = max_stored(n_dense, requested, n_layers)
    if n_stored > limit:
        out.append(
            f"compression: stores {n_stored} weights, measured ratio {n_dense / max(n_stored, 1):.3f}"
            f" < requested {requested:g} (at most {limit} allowed)"
        )
    return out


def _close_pair(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return math.isclose(a[0], b[0], abs_tol=1e-4) and math.isclose(a[1], b[1], abs_tol=1e-4)


def _metric_problems(record: dict) -> list[str]:
    m, out = record["metrics"], []
    for name in ("clean", "clean_eval_points", "pgd", "autoattack"):
        e = m.get(name)
        if e is None:
            out.append(f"metrics: {name} is missing")
            continue
        k, n, acc, (lo, hi) = e["correct"], e["n"], e["accuracy"], e["ci95"]
        if k > n:
            out.append(f"metrics: {name} counts {k} correct of only n={n}")
            continue
        if not math.isclose(acc, k / max(n, 1), abs_tol=_TOL):
            out.append(f"metrics: {name} accuracy {acc} is not correct/n = {k}/{n}")
        if not lo - _TOL <= acc <= hi + _TOL:
            out.append(f"metrics: {name} interval [{lo}, {hi}] does not contain accuracy {acc}")
        elif not _close_pair((lo, hi), wilson_interval(k, n)):
            out.append(f"metrics: {name} interval [{lo}, {hi}] is not the Wilson 95% of {k}/{n}")
    splits = record["suite"].get("splits")
    if isinstance(splits, dict) and "test" in splits and m["clean"]["n"] != splits["test"]:
        out.append(
            f"metrics: clean accuracy was measured on n={m['clean']['n']} points, the test split "
            f"has {splits['test']}"
        )
    clean_pts, aa, pgd = m.get("clean_eval_points"), m["autoattack"], m["pgd"]
    if clean_pts is not None:
        for name, e in (("autoattack", aa), ("pgd", pgd)):
            if e["n"] == clean_pts["n"] and e["correct"] > clean_pts["correct"]:
                out.append(
                    f"metrics: {name} ({e['correct']}/{e['n']}) is above clean accuracy on the "
                    f"same points ({clean_pts['correct']}/{clean_pts['n']}): impossible for an attack"
                )
    return out


def _points_problems(record: dict) -> list[str]:
    """The per-point bits must be the counts: as many points as n_eval, as many ones as each
    count, and no point robust that is not clean-correct."""
    m, out = record["metrics"], []
    try:
        bits = record_points(record)
    except RbenchError as exc:
        return [f"metrics.points: {exc}"]
    n = m["points"]["n"]
    if n != m["autoattack"]["n"]:
        out.append(f"metrics.points: n={n} but AutoAttack was measured on n={m['autoattack']['n']}")
        return out
    for kind, entry in (
        ("clean", m.get("clean_eval_points")),
        ("pgd", m["pgd"]),
        ("autoattack", m["autoattack"]),
    ):
        if entry is not None and int(bits[kind].sum()) != entry["correct"]:
            out.append(
                f"metrics.points: {kind} marks {int(bits[kind].sum())} points correct, the count "
                f"says {entry['correct']}"
            )
    for kind in ("pgd", "autoattack"):
        if (bits[kind] & ~bits["clean"]).any():
            out.append(f"metrics.points: a point is {kind}-robust but not clean-correct")
    curve = m["security_curve"]
    if curve["n"] != n or len(curve["eps"]) != len(curve["accuracy"]):
        out.append("metrics.security_curve: its points or its grid do not match the evaluation")
    elif curve["accuracy"][0] > bits["clean"].mean() + _TOL:
        out.append("metrics.security_curve: the curve at eps 0 is above clean accuracy")
    elif any(b > a + _TOL for a, b in zip(curve["accuracy"], curve["accuracy"][1:], strict=False)):
        out.append("metrics.security_curve: robust accuracy rises with eps")
    return out


def _flag_problems(record: dict) -> list[str]:
    flags, m, out = record["flags"], record["metrics"], []
    if (
        m["autoattack"]["accuracy"] > m["pgd"]["accuracy"] + _TOL
        and "autoattack_above_pgd" not in flags
    ):
        out.append("flags: AutoAttack is above PGD but the flag 'autoattack_above_pgd' is missing")
    if record["unreliable"] != any(f in UNRELIABLE for f in flags):
        out.append(
            f"flags: 'unreliable' is {str(record['unreliable']).lower()} but the flags "
            f"({', '.join(flags) or 'none'}) say otherwise"
        )
    return out


def _compute_problems(record: dict) -> list[str]:
    c, budget, out = record["compute"], record["budget"]["epochs"], []
    if not math.isclose(c["budget_epochs"], budget, rel_tol=_TOL, abs_tol=_TOL):
        out.append(
            f"compute: budget_epochs {c['budget_epochs']} differs from budget.epochs {budget}"
        )
    if c["used_epochs"] > budget * (1 + ComputeMeter.tolerance) + _TOL:
        out.append(
            f"compute: used {c['used_epochs']:.3f} AT-epochs of a {budget:g} budget "
            f"(+{ComputeMeter.tolerance:.0%} allowed)"
        )
    return out


def _hash_problems(record: dict) -> list[str]:
    h, out = record["hashes"], []
    for key, length in (("dense", 64), ("dense_stage_key", 16), ("compressed", 64), ("config", 16)):
        value = h.get(key)
        if not (isinstance(value, str) and len(value) == length and _HEX.match(value)):
            out.append(
                f"hashes: '{key}' must be a {length}-digit lowercase hex digest, got {value!r}"
            )
    if h.get("config") != content_hash(record["method"]["config"]):
        out.append("hashes: 'config' is not the hash of method.config")
    cache = record.get("cache")
    if isinstance(cache, dict) and {"compress", "evaluate"} <= set(cache):
        if record["run_id"] != content_hash({k: cache[k] for k in ("compress", "evaluate")}):
            out.append("hashes: run_id does not match the record's cache keys")
        if "dense" in cache and cache["dense"] != h.get("dense_stage_key"):
            out.append("hashes: 'dense_stage_key' differs from cache.dense")
    return out


def _location_problems(record: dict, path: Path) -> list[str]:
    """An entry under leaderboard/entries/<suite>/ must be of that suite."""
    folders = path.parts[:-1]
    if "entries" not in folders[:-1]:
        return []
    folder = folders[len(folders) - 1 - folders[::-1].index("entries") + 1]
    if folder == record["suite"]["name"]:
        return []
    return [
        f"location: filed under entries/{folder}/ but is a record of suite "
        f"'{record['suite']['name']}'"
    ]


def _printable(line: str) -> str:
    """Problem lines quote record content: no control characters, no screenfuls."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


def record_problems(
    record: dict, path: Path | None = None, require_protocol: str | None = None
) -> list[str]:
    """Every problem of one parsed record, one line each; [] when it is valid."""
    problems = schema_problems(record)
    if problems:
        return [_printable(p) for p in problems]  # the checks below assume the schema holds
    checks = [
        _suite_problems,
        partial(_protocol_problems, require=require_protocol),
        _ratio_problems,
        _metric_problems,
        _points_problems,
        _flag_problems,
        _compute_problems,
        _hash_problems,
    ]
    if path is not None:
        checks.append(partial(_location_problems, path=path))
    for check in checks:
        try:
            problems += check(record)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            name = getattr(check, "func", check).__name__.strip("_")
            problems.append(f"malformed record: {type(exc).__name__} {exc} (in {name})")
    return [_printable(p) for p in problems]


def validate_paths(
    paths: Iterable[str | Path], require_protocol: str | None = None
) -> dict[Path, list[str]]:
    """{file: its problems} for every record file under `paths` (an empty list: valid)."""
    results: dict[Path, list[str]] = {}
    valid: dict[Path, dict] = {}
    for path, early in record_files(paths):
        if early:
            results[path] = early
            continue
        record, problems = load_record_file(path)
        results[path] = (
            problems if record is None else record_problems(record, path, require_protocol)
        )
        if record is not None and not results[path]:
            valid[path] = record
    for path, problem in _dense_model_problems(valid):
        results[path].append(problem)
    return results


def _dense_model_problems(records: dict[Path, dict]) -> Iterator[tuple[Path, str]]:
    """Records of one dense stage (one suite, recipe and seed) must start from one dense model.

    The board pairs every entry of a seed with that seed's control, which is only a comparison of
    methods if they all compressed the same weights; a dense model retrained to other weights
    (another machine, a nondeterministic kernel) under the same stage key would break it silently.
    """
    weights = dense_models_by_stage(records.items())
    for stage_key, by_hash in weights.items():
        if len(by_hash) < 2:
            continue
        for digest, paths in by_hash.items():
            others = ", ".join(d[:12] for d in sorted(by_hash) if d != digest)
            for path in paths:
                yield (
                    path,
                    (
                        f"hashes: dense model {digest[:12]} differs from {others} in other records of"
                        f" dense stage {stage_key}: their paired comparisons would mix dense models"
                    ),
                )
