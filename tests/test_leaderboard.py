"""The leaderboard renderer on synthetic records: grouping by suite / threat / protocol / budget,
ranks from paired tests within each ratio, the control row, seeds collapsed to mean +- std, bad
records skipped one line each."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from rbench.core.suites import ThreatModel, get_suite
from rbench.evaluate.accuracy import wilson_interval
from rbench.evaluate.curves import curve_entry
from rbench.report.leaderboard import build, load_records
from rbench.store.cache import content_hash
from rbench.store.points import points_entry
from rbench.store.records import SCHEMA_ID, validate_record


def acc(correct: int, n: int) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / n, "correct": correct, "n": n, "ci95": [lo, hi]}


def make_record(
    method="magnitude",
    ratio=4.0,
    seed=0,
    aa=50,
    clean=90,
    protocol="standard",
    n_eval=100,
    eps="0.1",
    suite="digits",
    cond=(3.0, 10.0),
    used=3.9,
    flags=None,
    created="2026-01-01T00:00:00+00:00",
    singular=0,
    robust=None,
    budget=4.0,
) -> dict:
    """A schema-valid record; `aa` and `clean` are counts out of n_eval. The AutoAttack-robust
    points are the first `aa` (or the ids in `robust`); the clean-correct ones the first `clean`
    together with the robust ones."""
    robust_bits = torch.zeros(n_eval, dtype=torch.bool)
    robust_bits[list(robust) if robust is not None else slice(0, aa)] = True
    aa = int(robust_bits.sum())
    clean_bits = (torch.arange(n_eval) < clean) | robust_bits
    pgd_bits = robust_bits.clone()
    extra = [i for i in range(n_eval) if clean_bits[i] and not robust_bits[i]][:5]
    pgd_bits[extra] = True
    norms = torch.where(robust_bits, 0.15, 0.05) * clean_bits.float()
    key = [method, ratio, seed, protocol, n_eval, eps, suite, aa, created, robust, budget]
    layer = {"layer": "net.0.0", "shape": [4, 1, 3, 3], "singular_values": [2.0, 1.0, 0.5, 0.1]}
    record = {
        "schema": SCHEMA_ID,
        "run_id": content_hash(key),
        "created": created,
        "suite": {
            "name": suite,
            "version": get_suite(suite).version if suite in ("digits", "mnist5k") else 1,
            "dataset": suite,
            "arch": "smallcnn",
            "threat": {"norm": "Linf", "eps": eps},
        },
        "method": {
            "name": method,
            "kind": "unstructured",
            "variant": "harness",
            "citation": "x",
            "config": {},
            "config_nondefault": {},
        },
        "seed": seed,
        "protocol": {
            "name": protocol,
            "n_eval": n_eval,
            "autoattack": "standard",
            "attacks": [],
            "pgd": {"steps": 20, "step_fraction": 0.1, "restarts": 1},
        },
        "budget": {"ratio": ratio, "epochs": budget},
        "compression": {
            "n_dense": 1000,
            "n_stored": int(1000 / ratio),
            "ratio": ratio,
            "macs_ratio": 1.0,
            "per_layer": [],
        },
        "compute": {"used_epochs": used * budget / 4.0, "budget_epochs": budget},
        "metrics": {
            "clean": acc(int(clean_bits.sum()), n_eval),
            "clean_eval_points": acc(int(clean_bits.sum()), n_eval),
            "pgd": acc(int(pgd_bits.sum()), n_eval),
            "autoattack": acc(aa, n_eval),
            "points": points_entry(
                n_eval, {"clean": clean_bits, "pgd": pgd_bits, "autoattack": robust_bits}
            ),
            "security_curve": curve_entry(norms, ThreatModel("Linf", eps)),
            "eval_ids": {"split": "test", "first": n_eval, "ids_sha256": "0" * 64},
        },
        "dense": {"source": "trained"},
        "flags": flags or {},
        "unreliable": bool(flags and "robust_above_clean" in flags),
        "diagnostics": {
            "layers": [layer],
            "summary": {
                "condition_number_rank_geomean": cond[0],
                "condition_number_rank_max": cond[1],
                "rank_deficient_layers": singular,
                "lipschitz_bound_log10": 1.5,
            },
        },
        "environment": {"rbench": "0.1.0", "torch": "2", "pyautoattack": "0.2.0"},
        "hashes": {
            "dense": "d" * 64,
            "dense_stage_key": "d" * 16,
            "compressed": "c" * 64,
            "config": "h",
        },
    }
    validate_record(record)
    return record


def write(root: Path, records: list[dict]) -> Path:
    for r in records:
        path = root / r["suite"]["name"] / r["method"]["name"] / f"{r['run_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    return root


def tables(markdown: str, which: int = 0) -> dict[str, list[dict]]:
    """Each `## ` section's `which`-th table (0: the ranked one, 1: the spectra and compute one)
    as a list of {column: cell}."""
    out = {}
    for section in markdown.split("\n## ")[1:]:
        title, *lines = section.splitlines()
        found, current = [], []
        for line in lines + [""]:
            if line.startswith("|"):
                current.append(line)
            elif current:
                found.append(current)
                current = []
        rows = [line for line in found[which] if not line.startswith("|--")]
        head = [c.strip() for c in rows[0].strip("|").split("|")]
        out[title] = [
            dict(zip(head, [c.strip() for c in r.strip("|").split("|")], strict=True))
            for r in rows[1:]
        ]
    return out


def test_rows_rank_by_paired_tests_within_each_ratio(tmp_path):
    records = [
        make_record("magnitude", 4, aa=40),
        make_record("hydra", 4, aa=55),
        make_record("radmm", 4, aa=47),
        make_record("magnitude", 16, aa=30),
        make_record("hydra", 16, aa=20, singular=2),
        make_record("dense", 1, aa=60, cond=(2.0, 4.0)),
        make_record("dense-ft", 1, aa=62),
    ]
    md_path, loaded = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    assert not loaded.skipped
    text = md_path.read_text()
    (rows,) = tables(text).values()
    order = [(r["ratio"], r["rank"], r["method"]) for r in rows]
    assert order == [
        ("1", "control", "dense-ft (control)"),
        ("4", "1", "hydra"),  # 15 and 8 more robust points than magnitude and radmm, one-sided
        ("4", "2", "radmm"),
        ("4", "3", "magnitude"),
        ("1", "control", "dense-ft (control)"),
        ("16", "1", "magnitude"),
        ("16", "2", "hydra"),
    ]
    hydra = rows[1]
    assert hydra["AutoAttack %"] == "55.0" and hydra["seeds"] == "1"
    lo, hi = wilson_interval(55, 100)
    assert hydra["95% CI"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    assert hydra["vs control"].startswith("-7.0 (p ") and rows[3]["p vs top"] == "<0.001"
    assert "dense model: clean" in text and "control (dense + the budget)" in text
    (second,) = tables(text, which=1).values()
    by = {(r["ratio"], r["method"]): r for r in second}
    assert by[("1", "dense")]["κ geo-mean"] == "2" and by[("1", "dense")]["κ max"] == "4"
    assert by[("4", "hydra")]["compute (AT-ep)"] == "3.90 / 4"
    assert by[("16", "hydra")]["κ max"] == "10 (singular)"


def test_planted_difference_gives_the_exact_mcnemar_result(tmp_path):
    """A is robust on points 0-59, B on 0-49 and 60-64: 10 points favour A, 5 favour B, so the
    exact two-sided McNemar p is 2 P(Bin(15, 1/2) <= 5) = 0.302; the rows tie ("1=")."""
    from scipy.stats import binom

    from rbench.report import paired

    a = torch.arange(100) < 60
    b = (torch.arange(100) < 50) | ((torch.arange(100) >= 60) & (torch.arange(100) < 65))
    expected = 2 * binom.cdf(5, 15, 0.5)
    assert paired.discordant(a.numpy(), b.numpy()) == (10, 5)
    assert paired.mcnemar_exact(10, 5) == pytest.approx(expected)
    # three seeds with the same planted difference pool to 30 against 15
    pooled = paired.stratified([(a.numpy(), b.numpy())] * 3)
    assert (pooled["a_only"], pooled["b_only"]) == (30, 15)
    assert pooled["p"] == pytest.approx(2 * binom.cdf(15, 45, 0.5))
    records = [
        make_record("hydra", 4, robust=range(60), clean=90),
        make_record("magnitude", 4, robust=[*range(50), *range(60, 65)], clean=90),
    ]
    md_path, _ = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    assert [(r["method"], r["rank"]) for r in rows] == [("hydra", "1="), ("magnitude", "1=")]
    assert rows[1]["p vs top"] == f"{expected:.2f}"


def test_rows_evaluated_on_different_points_are_never_paired(tmp_path):
    """Bits are paired only on the same seed and the same evaluated ids: a record whose points
    differ (another ids hash) has no test against the others, so no rank separates it, however
    far apart the counts are; on the same points the same counts are told apart."""
    apart = make_record("magnitude", 4, aa=10)
    apart["metrics"]["eval_ids"]["ids_sha256"] = "1" * 64
    records = [make_record("hydra", 4, aa=90), apart]
    md_path, _ = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    assert [(r["method"], r["rank"], r["p vs top"]) for r in rows] == [
        ("hydra", "1=", ""),
        ("magnitude", "1=", ""),
    ]
    same = [make_record("hydra", 4, aa=90), make_record("magnitude", 4, aa=10)]
    md_path, _ = build([write(tmp_path / "same", same)], tmp_path / "out2", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    assert [(r["method"], r["rank"]) for r in rows] == [("hydra", "1"), ("magnitude", "2")]


def test_the_difference_to_the_control_is_taken_on_the_seeds_both_rows_have(tmp_path):
    """A row evaluated on seed 0 only is compared with the control's seed 0, not with the mean of
    the control's three seeds: the shown difference is the paired test's own."""
    records = [make_record("dense-ft", 1, seed=s, aa=a) for s, a in [(0, 60), (1, 40), (2, 41)]]
    records.append(make_record("hydra", 4, seed=0, aa=55))
    md_path, _ = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    hydra = next(r for r in rows if r["method"].startswith("hydra"))
    assert hydra["vs control"].startswith("-5.0 (p ")  # 55 - 60 on seed 0; the means give +8.0


def test_holm_and_the_detectable_difference():
    from rbench.report import paired

    adjusted = paired.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    # more points or more seeds resolve smaller differences
    small, large = (
        paired.min_detectable_difference(200, 0.06),
        paired.min_detectable_difference(1000, 0.06),
    )
    pooled = paired.min_detectable_difference(200, 0.06, seeds=3)
    assert 0 < large < pooled < small < 0.06


def test_seeds_of_one_configuration_collapse_to_mean_and_std(tmp_path):
    # two seeds with rank-deficient layers (2 and 3 of them): counted as seeds, not layers
    records = [
        make_record("magnitude", 4, seed=s, aa=a, singular=k)
        for s, a, k in [(0, 40, 2), (1, 50, 0), (2, 60, 3)]
    ]
    records.append(make_record("hydra", 4, seed=0, aa=45))
    md_path, _ = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    magnitude = next(r for r in rows if r["method"] == "magnitude")
    # paired on seed 0 only (hydra has no other seed): 40 against 45, not separable
    assert magnitude["rank"] == "1=" and magnitude["seeds"] == "3"
    assert magnitude["AutoAttack %"] == "50.0 ± 10.0"
    lo, hi = wilson_interval(150, 300)  # pooled over the three seeds' points
    assert magnitude["95% CI"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    (second,) = tables(md_path.read_text(), which=1).values()
    spectra = next(r for r in second if r["method"] == "magnitude")
    assert spectra["worst seed AA %"] == "40.0"
    assert spectra["κ max"] == "10 (singular in 2 of 3 seeds)"
    with open(tmp_path / "out" / "leaderboard.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["method"] == "magnitude")
    assert float(row["autoattack"]) == pytest.approx(50.0)
    assert float(row["autoattack_std"]) == pytest.approx(10.0)
    assert (float(row["autoattack_min"]), float(row["autoattack_max"])) == (40.0, 60.0)
    assert row["seeds"] == "0,1,2"


def test_different_protocols_suites_threats_and_budgets_never_share_a_table(tmp_path):
    records = [
        make_record("magnitude", 4, aa=40, protocol="standard"),
        make_record("hydra", 4, aa=70, protocol="quick"),
        make_record("radmm", 4, aa=65, protocol="standard", n_eval=200),  # another n_eval
        make_record("tscnc", 4, aa=60, eps="0.2"),  # another threat model
        make_record("hydra", 4, aa=50, suite="mnist5k", budget=5.0),
        make_record("hydra", 4, aa=30, suite="mnist5k", budget=1.0),  # the compute axis
    ]
    md_path, _ = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    text = md_path.read_text()
    found = tables(text)
    assert len(found) == 6
    ranked = {k: v for k, v in found.items() if k != "Compute axis"}
    for rows in ranked.values():  # each alone, so each ranked first
        assert [r["rank"] for r in rows] == ["1"]
    assert [(r["budget (AT-ep)"], r["AutoAttack %"]) for r in found["Compute axis"]] == [
        ("1", "30.0")
    ]
    titles = list(found)
    assert sum("protocol quick" in t for t in titles) == 1
    assert sum("eps=0.2" in t for t in titles) == 1
    data = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert len(data["groups"]) == 5


def test_a_record_from_another_dense_model_is_skipped_not_paired(tmp_path):
    """A planted retrain: one record of the seed's dense stage compressed other dense weights.
    The board keeps the stage's majority and skips the stray record, naming why; a tie (no
    majority) skips the whole stage rather than pick one."""
    stray = make_record("radmm", 4, aa=70)
    stray["hashes"]["dense"] = "e" * 64
    good = [make_record("magnitude", 4, aa=40), make_record("hydra", 4, aa=45), stray]
    loaded = load_records([write(tmp_path / "in", good)])
    assert sorted(r["method"]["name"] for r in loaded.records) == ["hydra", "magnitude"]
    (line,) = loaded.skipped
    assert "radmm" in line and "dense model eeeeeeeeeeee" in line and "mix dense models" in line
    md_path, _ = build([tmp_path / "in"], tmp_path / "out", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    assert sorted(r["method"] for r in rows) == ["hydra", "magnitude"]

    rival = make_record("sparse-robust", 4, aa=50)
    rival["hashes"]["dense"] = "e" * 64
    loaded = load_records([write(tmp_path / "in", [rival])])  # two against two
    assert loaded.records == [] and len(loaded.skipped) == 4


def test_bad_records_are_skipped_with_one_line_each(tmp_path):
    root = write(tmp_path / "in", [make_record("magnitude", 4, aa=40)])
    bad = root / "digits" / "bad"
    bad.mkdir()
    (bad / "not-json.json").write_text("{oops")
    (bad / "a-list.json").write_text("[1, 2]")
    broken = make_record("hydra", 4, aa=50)
    broken["metrics"]["autoattack"]["accuracy"] = 7  # outside [0, 1]
    (bad / "schema.json").write_text(json.dumps(broken))
    nan = make_record("radmm", 4, aa=50)
    nan["compression"]["macs_ratio"] = "fast"
    (bad / "type.json").write_text(json.dumps(nan))
    copy = root / "digits" / "copy.json"
    copy.write_text(json.dumps(make_record("magnitude", 4, aa=40)))
    hostile = make_record("radmm", 8, aa=50)
    hostile["method"]["variant"] = "x|y\n## injected [link](http://e.vil)"
    (bad / "hostile.json").write_text(json.dumps(hostile))
    loaded = load_records([root])
    assert len(loaded.skipped) == 5
    assert all("\n" not in line for line in loaded.skipped)
    names = {Path(line.split(":")[0]).name for line in loaded.skipped if "duplicate" not in line}
    assert names == {"not-json.json", "a-list.json", "schema.json", "type.json"}
    assert sum("duplicate of" in line for line in loaded.skipped) == 1  # same run id twice
    md_path, _ = build([root], tmp_path / "out", plots=False)
    text = md_path.read_text()
    assert not any(line.startswith("## injected") for line in text.splitlines())
    assert "](http" not in text  # record text cannot make links or break out of its cell
    assert len(tables(text)) == 1
    assert "5 record(s) were skipped" in text


def test_seeds_at_chance_accuracy_are_marked_collapsed(tmp_path):
    """digits has 10 classes: clean accuracy below 15% is a collapsed model. A suite this
    installation does not know has no chance level, so nothing is marked there. Marks say how
    many of a row's seeds carry them."""
    records = [
        make_record("magnitude", 4, seed=0, clean=90, aa=50),
        make_record("magnitude", 4, seed=1, clean=9, aa=8, flags={"robust_above_clean": "x"}),
        make_record("hydra", 4, clean=14, aa=10),
        make_record("cstar", 4, clean=15, aa=10),
        make_record("radmm", 4, clean=5, aa=5, suite="not-registered"),
    ]
    md_path, _ = build([write(tmp_path / "in", records)], tmp_path / "out", plots=False)
    rows = {r["method"]: r for rs in tables(md_path.read_text()).values() for r in rs}
    assert rows["magnitude"]["flags"] == (
        "**unreliable** 1/2, **collapsed** 1/2, robust_above_clean"
    )
    assert rows["hydra"]["flags"] == "**collapsed**"
    assert rows["cstar"]["flags"] == "" and rows["radmm"]["flags"] == ""


def test_superseded_seed_keeps_the_newest_and_flags_show(tmp_path):
    old = make_record("magnitude", 4, aa=10, created="2026-01-01T00:00:00+00:00")
    new = make_record(
        "magnitude",
        4,
        aa=45,
        created="2026-02-01T00:00:00+00:00",
        used=4.5,
        flags={"robust_above_clean": "x", "autoattack_above_pgd": "y"},
    )
    md_path, loaded = build([write(tmp_path / "in", [old, new])], tmp_path / "out", plots=False)
    (rows,) = tables(md_path.read_text()).values()
    assert len(rows) == 1 and rows[0]["AutoAttack %"] == "45.0"
    assert "superseded" in loaded.skipped[0]
    assert re.search(r"unreliable.*over budget.*autoattack_above_pgd", rows[0]["flags"])


def test_plots_are_written_and_linked(tmp_path):
    records = [make_record("dense", 1, aa=60)]
    records += [
        make_record(m, r, seed=s, aa=a - 3 * s)
        for m, a in [("magnitude", 40), ("hydra", 50)]
        for r in (2, 8)
        for s in (0, 1)
    ]
    records += [make_record("dense-ft", 1, aa=62), make_record("hydra", 8, aa=30, budget=1.0)]
    records[-3]["diagnostics"] = {
        "layers": [1, {"layer": 3}, {"layer": "x", "singular_values": ["a", -1, 1e300]}],
        "summary": [],
    }  # malformed, yet schema-valid
    md_path, loaded = build([write(tmp_path / "in", records)], tmp_path / "out")
    assert not loaded.skipped  # rendered; its malformed spectra are left out of the plots
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md_path.read_text())
    # robust vs ratio, clean vs robust, security curves and spectra at ratios 2 and 8, and the
    # compute axis (hydra at 1 and 4 AT-epochs against the control)
    assert len(links) == 7
    assert sum("-v3-standard-n100-4ep-" in link for link in links) == 6
    assert "plots/digits-v3-compute-axis-r8.png" in links
    for link in links:
        png = tmp_path / "out" / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_option_overrides_are_shown_and_kept_apart(tmp_path):
    """A record with option overrides is its own row (not a newer seed of the default one) and
    its variant cell names the overrides."""
    default = make_record("radmm", 4, aa=60)
    override = make_record("radmm", 4, aa=10, created="2026-02-01T00:00:00+00:00")
    override["method"]["config_nondefault"] = {"structure": "filter", "a": 1}
    md_path, loaded = build(
        [write(tmp_path / "in", [default, override])], tmp_path / "out", plots=False
    )
    (rows,) = tables(md_path.read_text()).values()
    assert [(r["method"], r["AutoAttack %"]) for r in rows] == [
        ("radmm", "60.0"),
        ("radmm (harness, a=1, structure=filter)", "10.0"),
    ]
    assert loaded.skipped == []
