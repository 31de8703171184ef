"""`rbench validate` accepts a record the harness could have written and rejects, with one clear
line each, every kind of problem: schema, suite, protocol, ratio, metrics, flags, compute, hashes,
location, and input that is not safe JSON."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from rbench.core.budget import compressible_layers
from rbench.core.suites import get_suite
from rbench.data.models import build_model
from rbench.evaluate.accuracy import wilson_interval
from rbench.evaluate.curves import curve_entry
from rbench.report import validate as val
from rbench.store.cache import content_hash
from rbench.store.points import points_entry
from rbench.store.records import SCHEMA_ID, validate_record


def _acc(k: int, n: int, **extra) -> dict:
    return {"accuracy": k / n, "correct": k, "n": n, "ci95": list(wilson_interval(k, n)), **extra}


def _first(k: int, n: int = 100) -> torch.Tensor:
    return torch.arange(n) < k


def _curve() -> dict:
    """A security curve of 100 points whose minimal norms make it agree with the counts."""
    norms = torch.cat([torch.zeros(9), torch.linspace(0.05, 0.3, 91)])
    return curve_entry(norms, get_suite("digits").threat)


def valid_record() -> dict:
    """A digits/quick record written by hand from rbench.store.records' schema, consistent throughout."""
    suite = get_suite("digits")
    protocol = json.loads(json.dumps(asdict(suite.protocol("quick"))))
    info = suite.data
    model = build_model(suite.arch, info.input_shape, info.num_classes, info.mean, info.std)
    rows = [
        {"layer": p, "dense": m.weight.numel(), "stored": m.weight.numel() // 4, "density": 0.25}
        for p, m in compressible_layers(model).items()
    ]
    n_dense, n_stored = sum(r["dense"] for r in rows), sum(r["stored"] for r in rows)
    config = {"variant": "harness", "scope": "layer", "lr": 0.01}
    cache = {"dense": "0123456789abcdef", "compress": "1111111111111111", "evaluate": "2" * 16}
    return {
        "schema": SCHEMA_ID,
        "run_id": content_hash({"compress": cache["compress"], "evaluate": cache["evaluate"]}),
        "created": "2025-01-01T00:00:00+00:00",
        "suite": {
            "name": "digits",
            "version": suite.version,
            "dataset": "digits",
            "arch": suite.arch,
            "threat": asdict(suite.threat),
            "splits": {"train": 1197, "val": 200, "test": 400},
        },
        "method": {
            "name": "magnitude",
            "kind": "unstructured",
            "variant": "harness",
            "citation": "a paper",
            "config": config,
        },
        "seed": 0,
        "protocol": protocol,
        "budget": {"ratio": 4.0, "epochs": 1.0},
        "compression": {
            "n_dense": n_dense,
            "n_stored": n_stored,
            "ratio": n_dense / n_stored,
            "macs_ratio": 1.0,
            "per_layer": rows,
        },
        "compute": {"used_epochs": 1.0, "budget_epochs": 1.0},
        "metrics": {
            "clean": _acc(345, 400, split="test"),
            "clean_eval_points": _acc(91, 100),
            "pgd": _acc(66, 100),
            "autoattack": _acc(59, 100),
            "points": points_entry(
                100, {"clean": _first(91), "pgd": _first(66), "autoattack": _first(59)}
            ),
            "security_curve": _curve(),
        },
        "dense": {"source": "trained"},
        "tuning": None,
        "flags": {},
        "unreliable": False,
        "cache": cache,
        "environment": {"rbench": "0.1.0", "torch": "2", "pyautoattack": "0.2.0"},
        "hashes": {
            "dense": "cd" * 32,
            "dense_stage_key": cache["dense"],
            "compressed": "ab" * 32,
            "config": content_hash(config),
        },
    }


def _set(path: str, value):
    def mutate(r: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            r = r[int(key)] if isinstance(r, list) else r[key]
        if value is KeyError:
            del r[last]
        else:
            r[last] = value

    return mutate


def _raise_stored(r: dict) -> None:
    r["compression"]["per_layer"][1]["stored"] += 200
    r["compression"]["n_stored"] += 200
    r["compression"]["ratio"] = r["compression"]["n_dense"] / r["compression"]["n_stored"]


def _aa_above_clean(r: dict) -> None:
    r["metrics"]["autoattack"] = _acc(95, 100)
    r["metrics"]["pgd"] = _acc(96, 100)


# (kind of problem, mutation of the valid record, text the problem line must contain)
PROBLEMS = [
    ("schema: missing key", _set("hashes", KeyError), "'hashes' is a required property"),
    ("schema: wrong type", _set("seed", "zero"), "at seed"),
    ("suite unknown", _set("suite.name", "no-such-suite"), "'no-such-suite' is not a suite"),
    ("suite version", _set("suite.version", 99), "version"),
    ("suite threat", _set("suite.threat.eps", "0.3"), "threat model"),
    ("protocol unknown", _set("protocol.name", "fast"), "has no protocol 'fast'"),
    ("protocol settings", _set("protocol.apgd_restarts", 5), "differ from the suite's"),
    ("n != n_eval", _set("metrics.autoattack", _acc(40, 80)), "n_eval is 100"),
    ("ratio below requested", _raise_stored, "< requested 4"),
    ("per-layer sums", _set("compression.n_dense", 27000), "do not add up to n_dense"),
    ("accuracy != correct/n", _set("metrics.pgd.accuracy", 0.7), "is not correct/n = 66/100"),
    ("interval excludes estimate", _set("metrics.pgd.ci95", [0.1, 0.2]), "does not contain"),
    ("interval not Wilson", _set("metrics.pgd.ci95", [0.5, 0.9]), "is not the Wilson 95%"),
    ("AutoAttack above clean", _aa_above_clean, "above clean accuracy on the same points"),
    ("correct > n", _set("metrics.clean.correct", 401), "correct of only n=400"),
    ("missing flag", _set("metrics.autoattack", _acc(70, 100)), "'autoattack_above_pgd'"),
    ("unreliable", _set("unreliable", True), "'unreliable' is true"),
    ("compute over budget", _set("compute.used_epochs", 1.2), "AT-epochs of a 1 budget"),
    ("hash absent", _set("hashes.compressed", None), "at hashes/compressed"),
    ("config hash", _set("method.config.lr", 0.1), "not the hash of method.config"),
    ("run id", _set("run_id", "f" * 16), "run_id does not match"),
    ("points vs counts", _set("metrics.pgd", _acc(65, 100)), "pgd marks 66 points correct"),
    ("points not base64", _set("metrics.points.pgd", "QUJD"), "not the base64 of 100 points"),
    (
        "robust but wrong",
        _set("metrics.points.autoattack", points_entry(100, {"a": ~_first(41)})["a"]),
        "autoattack-robust but not clean-correct",
    ),
    ("curve rises", _set("metrics.security_curve.accuracy", [0.5] + [0.6] * 20), "rises with eps"),
    # non-finite and out-of-range numbers: the schema itself refuses them (issue 14, item 2)
    ("NaN accuracy", _set("metrics.autoattack.accuracy", float("nan")), "at metrics/autoattack"),
    ("inf ratio", _set("compression.ratio", float("inf")), "at compression/ratio"),
    ("NaN in a free section", _set("extra_metrics", {"loss": float("nan")}), "not a finite"),
    ("interval above 1", _set("metrics.pgd.ci95", [0.5, 1.5]), "at metrics/pgd/ci95/1"),
    ("negative count", _set("compression.n_stored", -5), "at compression/n_stored"),
    ("compute 1e6 epochs", _set("compute.used_epochs", 1e6), "at compute/used_epochs"),
    ("seed beyond 2^31", _set("seed", 2**31), "at seed"),
    ("eps sweep above 1", _set("metrics.eps_sweep_pgd10", {"1x": 1.2}), "eps_sweep_pgd10/1x"),
    ("typed ratio differs", _set("budget.ratio_requested", "16"), "not the ratio requested"),
    ("typed ratio not a number", _set("budget.ratio_requested", "sixteen"), "does not match"),
]


def test_the_hand_built_record_is_valid():
    record = valid_record()
    validate_record(record)  # the harness's own schema check
    assert val.record_problems(record) == []
    record["budget"]["ratio_requested"] = "4"  # what the harness now writes beside the ratio
    assert val.record_problems(record) == []


@pytest.mark.parametrize("where", ["metrics.autoattack.accuracy", "metrics.pgd.accuracy"])
def test_nan_record_is_refused_by_the_schema_validate_and_the_leaderboard(tmp_path, cli, where):
    """A record whose accuracy is NaN: the harness's own check refuses it, `rbench validate`
    refuses the file (NaN is not JSON) with exit 2, and the leaderboard skips it, so it is
    never ranked and never displaces the good record beside it."""
    from rbench.core.errors import RbenchError
    from rbench.report.leaderboard import load_records

    good_record = valid_record()
    good_record["metrics"]["eval_ids"] = {"split": "test", "first": 100, "ids_sha256": "0" * 64}
    bad = copy.deepcopy(good_record)
    _set(where, float("nan"))(bad)
    with pytest.raises(RbenchError, match="record fails the schema at metrics/"):
        validate_record(bad)
    assert any("metrics/" in p for p in val.schema_problems(bad))
    good = _write(tmp_path / "r" / "good.json", json.dumps(good_record))
    # the same run id, read first: were it accepted, the good record would be its "duplicate"
    nan = _write(tmp_path / "r" / "a-nan.json", json.dumps(bad))  # json writes NaN unless told
    assert "NaN" in nan.read_text()
    code, out, _ = cli("validate", str(nan))
    assert code == 2 and "JSON constant NaN is not allowed" in out
    loaded = load_records([tmp_path / "r"])
    assert [r["_path"] for r in loaded.records] == [str(good)]
    assert any(line.startswith(str(nan)) for line in loaded.skipped)


def test_deeply_nested_record_is_skipped_by_the_leaderboard(tmp_path):
    from rbench.report.leaderboard import load_records

    deep = _write(tmp_path / "r" / "deep.json", "[" * 100_000 + "]" * 100_000)
    loaded = load_records([tmp_path / "r"])
    assert loaded.records == [] and "nests 100000 levels deep" in loaded.skipped[0], loaded.skipped
    assert str(deep) in loaded.skipped[0]


@pytest.mark.parametrize("kind,mutate,expected", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_each_problem_is_reported_in_one_line(kind, mutate, expected):
    record = copy.deepcopy(valid_record())
    mutate(record)
    problems = val.record_problems(record)
    assert any(expected in line for line in problems), problems
    assert all("\n" not in line for line in problems)


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cli_exit_codes_and_one_line_per_problem(tmp_path, cli):
    good = _write(tmp_path / "good.json", json.dumps(valid_record()))
    code, out, _ = cli("validate", str(good))
    assert code == 0
    assert f"{good}: ok" in out

    bad_record = valid_record()
    _raise_stored(bad_record)
    bad_record["hashes"]["config"] = ""
    bad = _write(tmp_path / "bad.json", json.dumps(bad_record))
    code, out, _ = cli("validate", str(tmp_path))
    assert code == 2
    lines = out.splitlines()
    assert f"{good}: ok" in lines and f"{bad}: ok" not in lines
    bad_lines = [line for line in lines if line.startswith(f"{bad}: ")]
    assert any("< requested 4" in line for line in bad_lines)
    assert any("'config' must be a 16-digit" in line for line in bad_lines)
    assert lines[-1] == "2 record(s) checked, 1 with problems"


def test_required_protocol_for_leaderboard_entries():
    problems = val.record_problems(valid_record(), require_protocol="standard")
    assert problems == ["protocol: is 'quick', this submission needs 'standard'"]


def test_entry_filed_under_another_suite(tmp_path):
    path = _write(tmp_path / "entries" / "mnist5k" / "x.json", json.dumps(valid_record()))
    (problems,) = val.validate_paths([tmp_path]).values()
    assert problems == [
        "location: filed under entries/mnist5k/ but is a record of suite 'digits'"
    ], path


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"a": NaN}', "JSON constant NaN is not allowed"),
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ("[1, 2]", "holds a JSON list"),
        ('{"schema": ', "is not valid JSON"),
        ("[" * 100_000, "nests 100000 levels deep, more than the 32 allowed"),
        ('{"a": ' * 33 + "1" + "}" * 33, "nests 33 levels deep"),
    ],
)
def test_untrusted_json_is_refused(tmp_path, text, expected):
    path = _write(tmp_path / "r.json", text)
    (problems,) = val.validate_paths([path]).values()
    assert len(problems) == 1 and expected in problems[0]


def test_oversized_file_is_not_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(val, "MAX_BYTES", 100)
    path = _write(tmp_path / "r.json", json.dumps(valid_record()))
    (problems,) = val.validate_paths([path]).values()
    assert "more than the 100 a record may have" in problems[0]


def test_links_inside_a_folder_are_not_followed(tmp_path):
    secret = _write(tmp_path / "outside" / "secret.txt", "not a record")
    entries = tmp_path / "entries"
    entries.mkdir()
    (entries / "link.json").symlink_to(secret)
    (entries / "linked_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    results = val.validate_paths([entries])
    assert {p.name: v for p, v in results.items()} == {
        "link.json": ["is a symbolic link; submit records as regular files"],
        "linked_dir": ["is a linked directory; it was not followed"],
    }


def test_missing_path_and_empty_folder(tmp_path, cli):
    (problems,) = val.validate_paths([tmp_path / "nope.json"]).values()
    assert problems == ["does not exist"]
    code, _, err = cli("validate", str(tmp_path))
    assert code == 2
    assert "no record files" in err


def test_record_text_cannot_break_the_one_line_output():
    evil_name, long_value = valid_record(), valid_record()
    evil_name["protocol"]["name"] = "quick\nok\x1b[2J"  # passes the schema, fails the protocol
    long_value["created"] = 7 * ["x" * 1000]  # fails the schema with a long message
    for record in (evil_name, long_value):
        problems = val.record_problems(record)
        assert problems and all(p.isprintable() and len(p) <= val.MAX_LINE for p in problems)


def test_records_of_one_dense_stage_must_share_the_dense_model(tmp_path):
    """A planted retrain: a second record of the same dense stage whose dense weights differ."""
    first, same, other = valid_record(), valid_record(), valid_record()
    same["method"]["name"] = other["method"]["name"] = "hydra"  # other entries of the same seed
    other["hashes"]["dense"] = "f" * 64
    for name, record in (("a", first), ("b", same)):
        _write(tmp_path / f"{name}.json", json.dumps(record))
    assert all(p == [] for p in val.validate_paths([tmp_path]).values())

    _write(tmp_path / "c.json", json.dumps(other))
    results = {path.name: problems for path, problems in val.validate_paths([tmp_path]).items()}
    stage = first["hashes"]["dense_stage_key"]
    assert results["c.json"] == [
        f"hashes: dense model ffffffffffff differs from {first['hashes']['dense'][:12]} in other"
        f" records of dense stage {stage}: their paired comparisons would mix dense models"
    ]
    assert len(results["a.json"]) == len(results["b.json"]) == 1
    assert "differs from ffffffffffff" in results["a.json"][0]


def test_every_committed_leaderboard_record_is_valid():
    """The committed board's records pass every check, the cross-record ones included."""
    entries = Path(__file__).resolve().parents[1] / "leaderboard" / "entries"
    results = val.validate_paths([entries])
    assert len(results) >= 70
    assert {str(path): problems for path, problems in results.items() if problems} == {}
