"""From records to leaderboard rows: one flat row per record, then one row per configuration with
its seeds aggregated (mean, sample std, worst seed) and their per-point results kept for the
paired tests (rbench.report.paired).

Rows group into tables by (suite, suite version, threat model, protocol, compute budget), where
the protocol is the record's whole protocol (name, n_eval, PGD and AutoAttack settings) plus the
pyautoattack version: rows of different protocols or budgets never share a ranking. A record
repeated (same run id) or superseded (same configuration and seed, older) is skipped and
reported.
"""

from __future__ import annotations

import math

import pandas as pd

from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.evaluate.accuracy import wilson_interval
from rbench.store.cache import content_hash
from rbench.store.points import record_points

GROUP = ["suite", "suite_version", "threat", "protocol_key", "budget_epochs"]
CONFIG = ["method", "variant", "ratio", "config"]
METRICS = ["ratio_measured", "macs_ratio", "clean", "clean_points", "pgd", "autoattack"]
METRICS += ["cond_geomean", "cond_max", "singular_layers", "lipschitz_log10", "compute_used"]
METRICS += ["curve_area", "median_norm"]
MARKS = ("unreliable", "over_budget", "collapsed", "diverged")  # shown in bold, with seed counts
COLLAPSE = 1.5  # clean accuracy below this multiple of chance: the model no longer classifies
CONTROL, REFERENCE = "dense-ft", "dense"


def _number(value, name: str) -> float | None:
    """A finite float, None for null, anything else is a malformed record."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RbenchError(f"{name} is not a finite number: {value!r}")
    return float(value)


def _fraction(value, name: str) -> float:
    number = _number(value, name)
    if number is None or not 0 <= number <= 1:
        raise RbenchError(f"{name} is not an accuracy in [0, 1]: {value!r}")
    return number


def _variant(method: dict, tuning: dict | None) -> str:
    """The variant with any option overrides ("harness, structure=filter"); a rate set by the
    tuning protocol reads "lr tuned" rather than as an override."""
    options = dict(method.get("config_nondefault") or {})
    if not isinstance(options, dict):
        raise TypeError("method.config_nondefault is not an object")
    words = [str(method["variant"])]
    if tuning and tuning.get("applied"):
        for f in tuning["fields"]:
            options.pop(f, None)
        words.append(f"{'/'.join(tuning['fields'])} tuned")
    return ", ".join(words + [f"{k}={options[k]}" for k in sorted(options)])


def _classes(suite: str) -> int | None:
    try:
        return get_suite(suite).data.num_classes
    except RbenchError:
        return None


def record_row(r: dict) -> dict:
    """The flat row one record contributes (before seeds are aggregated)."""
    m, summary = r["metrics"], (r.get("diagnostics") or {}).get("summary") or {}
    threat, protocol = r["suite"]["threat"], r["protocol"]
    used, budget = _number(r["compute"]["used_epochs"], "compute"), r["budget"]["epochs"]
    curve = m["security_curve"]
    points = record_points(r)
    for k in ("clean", "pgd", "autoattack"):
        _fraction(m[k]["accuracy"], f"{k} accuracy")
    classes = _classes(r["suite"]["name"])
    tuning = r.get("tuning")
    return {
        "suite": r["suite"]["name"],
        "suite_version": r["suite"]["version"],
        "threat": f"{threat['norm']} eps={threat['eps']}",
        "protocol": str(protocol["name"]),
        "n_eval": int(protocol["n_eval"]),
        "protocol_key": content_hash(
            {**protocol, "batch_size": None, "aa": r["environment"]["pyautoattack"]}, 8
        ),  # the batch size changes no result
        "method": r["method"]["name"],
        "variant": _variant(r["method"], tuning),
        "ratio": float(r["budget"]["ratio"]),
        "config": content_hash(r["method"].get("config_nondefault") or {}, 8),
        "budget_epochs": float(budget),
        "seed": r["seed"],
        "created": str(r["created"]),
        "run_id": r["run_id"],
        "ids": m["eval_ids"]["ids_sha256"],
        "ratio_measured": _number(r["compression"]["ratio"], "measured ratio"),
        "macs_ratio": _number(r["compression"]["macs_ratio"], "MACs ratio"),
        **{k: 100 * m[k]["accuracy"] for k in ("clean", "pgd", "autoattack")},
        "clean_points": 100 * _fraction(m["clean_eval_points"]["accuracy"], "clean accuracy"),
        "aa_correct": m["autoattack"]["correct"],
        "aa_n": m["autoattack"]["n"],
        "aa_bits": points["autoattack"],
        "curve": (curve["eps"], curve["accuracy"]),
        "curve_area": 100 * _fraction(curve["area"], "curve area"),
        "median_norm": _number(curve["median_norm"], "median minimal perturbation"),
        "cond_geomean": _number(summary.get("condition_number_rank_geomean"), "condition number"),
        "cond_max": _number(summary.get("condition_number_rank_max"), "condition number"),
        "singular_layers": _number(summary.get("rank_deficient_layers"), "rank-deficient layers"),
        "lipschitz_log10": _number(summary.get("lipschitz_bound_log10"), "Lipschitz bound"),
        "compute_used": used,
        "tuned_rate": tuning["chosen"] if tuning and tuning.get("applied") else None,
        "tuning_compute": tuning["compute_epochs"] if tuning else None,
        "unreliable": bool(r["unreliable"]),
        "over_budget": used > budget * (1 + 1e-6),
        "collapsed": "collapsed" in r["flags"]
        or (classes is not None and m["clean"]["accuracy"] < COLLAPSE / classes),
        "diverged": "diverged" in r["flags"],
        "flags": ",".join(sorted(r["flags"])),
    }


def newest(rows: pd.DataFrame, records: list[dict], skipped: list[str]) -> pd.DataFrame:
    """Keep the newest record of each configuration and seed; report the others."""
    rows = rows.sort_values("created")
    kept = rows.drop_duplicates(CONFIG + GROUP + ["seed"], keep="last")
    for run_id in sorted(set(rows["run_id"]) - set(kept["run_id"])):
        path = next(r["_path"] for r in records if r["run_id"] == run_id)
        skipped.append(f"{path}: superseded by a newer record of the same configuration and seed")
    return kept


def aggregate(records: list[dict], skipped: list[str]) -> pd.DataFrame:
    """One row per configuration: seeds collapsed to mean and std, per-seed bits kept."""
    rows = pd.DataFrame([r["_row"] for r in records])
    if rows.empty:
        return rows
    out = []
    for _, g in newest(rows, records, skipped).groupby(GROUP + CONFIG, sort=False, dropna=False):
        row = g.iloc[0][GROUP + CONFIG + ["protocol", "n_eval"]].to_dict()
        for k in METRICS:
            values = g[k].dropna()
            row[k] = values.mean() if len(values) else None
            row[f"{k}_std"] = values.std() if len(values) > 1 else None
        row["singular_seeds"] = int((g["singular_layers"].fillna(0) > 0).sum())
        row["autoattack_min"], row["autoattack_max"] = g["autoattack"].min(), g["autoattack"].max()
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"]))
        row["n_seeds"] = len(g)
        lo, hi = wilson_interval(int(g["aa_correct"].sum()), int(g["aa_n"].sum()))
        row["aa_ci_low"], row["aa_ci_high"] = 100 * lo, 100 * hi  # pooled over the seeds
        # a stratum is a seed on its evaluation points: only bits of the same points are paired
        row["bits"] = {
            (int(s), i): b for s, b, i in zip(g["seed"], g["aa_bits"], g["ids"], strict=True)
        }
        row["ids"] = ",".join(sorted(set(g["ids"])))
        row["curve_eps"] = g["curve"].iloc[0][0]
        row["curve_mean"] = [
            sum(c[1][i] for c in g["curve"]) / len(g) for i in range(len(row["curve_eps"]))
        ]
        row["tuned_rate"] = (
            g["tuned_rate"].dropna().iloc[0] if g["tuned_rate"].notna().any() else None
        )
        row["tuning_compute"] = (
            g["tuning_compute"].dropna().max() if g["tuning_compute"].notna().any() else None
        )
        for mark in MARKS:  # how many seeds carry it; the row carries it if any seed does
            row[f"{mark}_seeds"] = int(g[mark].sum())
            row[mark] = row[f"{mark}_seeds"] > 0
        row["flags"] = ",".join(sorted({f for fs in g["flags"] for f in fs.split(",") if f}))
        out.append(row)
    table = pd.DataFrame(out).sort_values(
        GROUP + ["ratio", "autoattack", "clean"], ascending=[True] * 6 + [False, False]
    )
    return table.reset_index(drop=True)
