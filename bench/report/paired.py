"""Paired statistics for the leaderboard: which rows of a table the evaluation can tell apart.

Every entry of a table is evaluated on the same test points (the record's `eval_ids` hash), so two
entries are compared point by point. For one seed, the exact McNemar test: of the points on which
exactly one of the two is robust, under "no difference" each is equally likely to favour either,
so the count favouring A is Binomial(discordant, 1/2) (two-sided exact p-value). For several
seeds, seed s of A is paired with seed s of B (both start from the same dense model, seed s) and
the discordant counts are pooled over the shared seeds: under the null hypothesis each stratum is
Binomial(d_s, 1/2), so their sum is Binomial(sum d_s, 1/2) and the pooled test is exact (the
conditional, stratified form of McNemar's test; seeds are not averaged first, which would throw
the pairing away). Within a table every pair is tested and Holm's step-down correction holds the
family-wise error at `ALPHA`. A row's rank is 1 + the number of rows significantly better than it,
so rows the tests cannot separate share a rank ("2=").
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
from scipy.stats import binom, binomtest

ALPHA = 0.05


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(points robust under a only, points robust under b only)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results of different lengths: {a.shape} and {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum())


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value of the discordant counts (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(a_only, b_only), n, 0.5)))


def stratified(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The pooled exact test over seeds: pairs = [(A's bits, B's bits) for each shared seed]."""
    a_only = b_only = points = 0
    for a, b in pairs:
        x, y = discordant(a, b)
        a_only, b_only, points = a_only + x, b_only + y, points + len(a)
    return {
        "a_only": a_only,
        "b_only": b_only,
        "points": points,  # (a_only - b_only) / points: A's accuracy minus B's on the pairs
        "p": mcnemar_exact(a_only, b_only),
        "seeds": len(pairs),
    }


def holm(pvalues: dict[Hashable, float]) -> dict[Hashable, float]:
    """Holm-adjusted p-values (monotone step-down), same keys."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        out[key] = running
    return out


def compare_all(rows: dict[str, dict[Hashable, np.ndarray]]) -> dict[tuple[str, str], dict]:
    """Every pair of rows {name: {stratum: bits}} on their shared strata, Holm-corrected together.
    The leaderboard's stratum is (seed, hash of the evaluated ids): bits are paired only on the
    same seed and the same points. Pairs without a shared stratum are left out (they cannot be
    paired, and a rank never separates them)."""
    names, tests = sorted(rows), {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(rows[a]) & set(rows[b]))
            if shared:
                tests[(a, b)] = stratified([(rows[a][k], rows[b][k]) for k in shared])
    adjusted = holm({k: t["p"] for k, t in tests.items()})
    for key, test in tests.items():
        test["p_holm"] = adjusted[key]
    return tests


def lookup(tests: dict, a: str, b: str) -> dict | None:
    """The test of a against b, oriented so that `a_only` counts a's extra robust points."""
    if (a, b) in tests:
        return tests[(a, b)]
    if (b, a) in tests:
        t = tests[(b, a)]
        return {**t, "a_only": t["b_only"], "b_only": t["a_only"]}
    return None


def paired_difference(test: dict) -> float:
    """A's robust accuracy minus B's, in points of %, on the strata the test pairs (for several
    seeds the mean over the shared seeds, which a difference of the rows' means is not when one
    row has seeds the other lacks)."""
    return 100 * (test["a_only"] - test["b_only"]) / max(test["points"], 1)


def better(test: dict | None, alpha: float = ALPHA) -> bool:
    """Whether the first row of an oriented test is significantly more robust."""
    return test is not None and test["p_holm"] < alpha and test["a_only"] > test["b_only"]


def tie_ranks(names: list[str], tests: dict, alpha: float = ALPHA) -> dict[str, str]:
    """Rank = 1 + rows significantly better; "k=" when another row has the same rank."""
    ranks = {a: 1 + sum(better(lookup(tests, b, a), alpha) for b in names if b != a) for a in names}
    counts = {r: list(ranks.values()).count(r) for r in ranks.values()}
    return {a: f"{r}=" if counts[r] > 1 else str(r) for a, r in ranks.items()}


def min_detectable_difference(
    n: int, discordance: float, alpha: float = ALPHA, power: float = 0.8, seeds: int = 1
) -> float:
    """The smallest difference in robust accuracy (a fraction of the points) that the exact
    McNemar test at level `alpha` detects with probability `power`, when a share `discordance` of
    the n points (per seed) is discordant. Computed exactly: D ~ Binomial(seeds * n, discordance),
    A-only | D ~ Binomial(D, (1 + delta / discordance) / 2)."""
    total = seeds * n
    d_values = np.arange(total + 1)
    p_d = binom.pmf(d_values, total, discordance)
    keep = p_d > 1e-12
    d_values, p_d = d_values[keep], p_d[keep]
    # the rejection threshold for each D: the smallest k with two-sided p < alpha
    thresholds = []
    for d in d_values:
        k = int(d)
        while k > math.ceil(d / 2) and mcnemar_exact(k - 1, int(d) - k + 1) < alpha:
            k -= 1
        ok = mcnemar_exact(k, int(d) - k) < alpha
        thresholds.append(k if ok else int(d) + 1)
    thresholds = np.array(thresholds)
    for step in range(1, 2001):
        delta = discordance * step / 2000
        q = (1 + delta / discordance) / 2
        reject = (p_d * binom.sf(thresholds - 1, d_values, q)).sum()
        if reject >= power:
            return delta
    return discordance


def one_sided_greater(a_only: int, b_only: int) -> float:
    """p-value that A is more robust than B (for flags and cross-checks)."""
    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5, alternative="greater").pvalue)
