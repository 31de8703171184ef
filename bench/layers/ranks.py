"""Rank selection for factorised layers (methods.md 0.1): per-layer costs P_l(r), the
uniform-ratio closed form, the largest uniform rank fraction under a budget, `global_ranks`, a
greedy by captured energy per stored parameter that never exceeds the budget, and
`threshold_ranks`, one global energy threshold (bisection) with that greedy filling the rest.

Costs are the harness's count of what a factorised layer stores (design.md 3): Tucker-2
O*r1 + I*r2 + r1*r2*k*k, two factors r*(n + m), U S V^T r*(n + m) + r*r.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from rbench.core.budget import compressible_layers
from rbench.core.errors import RbenchError
from rbench.layers.factorised import unfold


def tucker2_cost(out_ch: int, in_ch: int, kernel: int, r1: int, r2: int) -> int:
    return out_ch * r1 + in_ch * r2 + r1 * r2 * kernel


def matrix_cost(n: int, m: int, r: int, core: bool = False) -> int:
    return r * (n + m) + (r * r if core else 0)


def uniform_rank(n: int, m: int, ratio: float, core: bool = True) -> int:
    """Largest r with r*(n+m) (+ r*r with a core) <= n*m/ratio (methods.md 0.1); 0 if none."""
    limit = n * m / ratio
    root = (-(n + m) + math.sqrt((n + m) ** 2 + 4 * limit)) / 2 if core else limit / (n + m)
    r = max(0, min(int(root), n, m))
    while r > 0 and matrix_cost(n, m, r, core) > limit:  # float rounding of the root
        r -= 1
    while r < min(n, m) and matrix_cost(n, m, r + 1, core) <= limit:
        r += 1
    return r


@dataclass
class RankUnit:
    """One layer in a rank selection. `form` is "tucker2" (k x k conv, ranks (r1, r2)), "tied"
    (1x1 conv, Tucker-2 with r1 = r2 = r) or "matrix" (linear, rank r; `core` adds S's r*r).
    `energy[j]` holds mode j's normalised squared singular values s_i^2 / sum s^2, descending."""

    path: str
    form: str
    dims: tuple[int, ...]  # (O, I, kh*kw) for convs, (n, m) for linears
    energy: tuple[torch.Tensor, ...]
    core: bool = False

    @property
    def dense_cost(self) -> int:
        return math.prod(self.dims)

    def min_ranks(self) -> tuple[int, ...]:
        return (1, 1) if self.form == "tucker2" else (1,)

    def cost(self, ranks: tuple[int, ...]) -> int:
        if self.form == "tucker2":
            return tucker2_cost(*self.dims, *ranks)
        if self.form == "tied":
            out_ch, in_ch, _ = self.dims
            return matrix_cost(out_ch, in_ch, ranks[0], core=True)
        return matrix_cost(*self.dims, ranks[0], self.core)

    def caps(self, ranks: tuple[int, ...]) -> tuple[int, ...]:
        if self.form == "tucker2":  # a larger rank than the other mode's span adds nothing
            out_ch, in_ch, kernel = self.dims
            return min(out_ch, ranks[1] * kernel), min(in_ch, ranks[0] * kernel)
        return (min(self.dims[0], self.dims[1]),)

    def steps(self, ranks: tuple[int, ...]) -> list[tuple[tuple[int, ...], float, int]]:
        """(next ranks, energy gained, parameters added) for each one-rank increase that stays
        within the caps and below the cost of keeping the layer dense."""
        out, caps, cost = [], self.caps(ranks), self.cost(ranks)
        for j, r in enumerate(ranks):
            new = tuple(r + (i == j) for i, r in enumerate(ranks))
            if r + 1 <= caps[j] and self.cost(new) <= self.dense_cost:
                gain = float(self.energy[j][r]) if r < len(self.energy[j]) else 0.0
                out.append((new, gain, self.cost(new) - cost))
        return out


def _energy(matrix: torch.Tensor) -> torch.Tensor:
    a = matrix.detach().float().cpu()  # energies need no float64 product (checked to 1e-8)
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    s2 = torch.linalg.eigvalsh(gram.double()).flip(0).clamp_min(0)
    return (s2 / s2.sum().clamp_min(1e-30)).float()


def rank_unit(path: str, module: nn.Module, core: bool = False, spectra: bool = True) -> RankUnit:
    """The rank-selection view of a Linear or Conv2d, with its spectra (or none: all gains 0,
    enough to test whether a budget is reachable)."""
    w = module.weight
    energy = _energy if spectra else (lambda _: torch.zeros(0))
    if isinstance(module, nn.Linear):
        return RankUnit(path, "matrix", tuple(w.shape), (energy(w),), core)
    out_ch, in_ch, kernel = w.shape[0], w.shape[1], w.shape[2:].numel()
    if kernel == 1:
        return RankUnit(path, "tied", (out_ch, in_ch, 1), (energy(w.reshape(out_ch, in_ch)),))
    return RankUnit(
        path, "tucker2", (out_ch, in_ch, kernel), (energy(unfold(w, 0)), energy(unfold(w, 1)))
    )


def plan_global(
    model: nn.Module,
    ratio: float,
    dense: Iterable[str] = (),
    spectra: bool = True,
    units: list[RankUnit] | None = None,
    rule: str = "threshold",
) -> dict[str, tuple[int, ...]]:
    """Ranks of every Conv2d/Linear not in `dense` (LowRankLinear / Tucker2Conv forms) so that the
    whole model, dense layers counted in full, stores at most floor(N_dense / ratio) weights.
    A layer whose smallest factorisation is not smaller than itself stays dense too. `rule` is
    "threshold" (`threshold_ranks`) or "greedy" (`global_ranks` from rank 1). `units` (from
    `rank_unit`) may be passed to reuse spectra across ratios."""
    layers, dense = compressible_layers(model), set(dense)
    n_dense = sum(m.weight.numel() for m in layers.values())
    if units is None:
        units = [rank_unit(p, m, spectra=spectra) for p, m in layers.items() if p not in dense]
    units = [u for u in units if u.path not in dense and u.cost(u.min_ranks()) < u.dense_cost]
    factorised = {u.path for u in units}
    kept = sum(m.weight.numel() for p, m in layers.items() if p not in factorised)
    budget = math.floor(n_dense / ratio) - kept
    if rule == "greedy":
        return global_ranks(units, budget)
    if rule == "threshold":
        return threshold_ranks(units, budget)
    raise RbenchError(f"unknown rank rule '{rule}' (choose threshold or greedy)")


def _ranks_at(unit: RankUnit, alpha: float) -> tuple[int, ...]:
    """The smallest ranks keeping at least `alpha` of each mode's energy, within the caps and
    the layer's dense cost."""
    ranks = [
        max(1, int(torch.searchsorted(e.cumsum(0), torch.tensor(alpha - 1e-7))) + 1)
        if len(e)
        else 1
        for e in unit.energy
    ]
    ranks = [min(r, c) for r, c in zip(ranks, unit.caps(tuple(ranks)), strict=True)]
    while unit.cost(tuple(ranks)) > unit.dense_cost and max(ranks) > 1:
        ranks[ranks.index(max(ranks))] -= 1
    return tuple(ranks)


def threshold_ranks(units: Iterable[RankUnit], budget: int) -> dict[str, tuple[int, ...]]:
    """One global energy threshold (methods.md 0.1 / 4(b)): every mode of every layer keeps the
    smallest rank holding a fraction alpha of its energy, alpha the largest that fits the budget
    (bisection), then `global_ranks` spends what is left. All layers end up with about the same
    relative error, where the greedy from rank 1 alone starves the expensive layers."""
    units = list(units)
    total = lambda alpha: sum(u.cost(_ranks_at(u, alpha)) for u in units)  # noqa: E731
    lo, hi = 0.0, 1.0
    for _ in range(40):  # cost grows with alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
    return global_ranks(units, budget, start={u.path: _ranks_at(u, lo) for u in units})


def global_ranks(
    units: Iterable[RankUnit], budget: int, start: dict[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Greedy global selection (methods.md 0.1 (b)): from rank 1 everywhere (or `start`),
    repeatedly take the one-rank step with the largest energy gained per parameter added among
    those that still fit, until none fits. The total cost never exceeds `budget`, and what is
    left is smaller than every step still open."""
    units = list(units)
    ranks = {u.path: (start or {}).get(u.path, u.min_ranks()) for u in units}
    spent = sum(u.cost(ranks[u.path]) for u in units)
    if spent > budget:
        raise RbenchError(
            f"even rank 1 everywhere stores {spent} weights, more than the budget of {budget}"
        )
    open_steps = {u.path: u.steps(ranks[u.path]) for u in units}
    by_path = {u.path: u for u in units}
    while True:
        best = None  # (gain, added, path, new ranks)
        for path, steps in open_steps.items():
            for new, gain, added in steps:
                if added <= budget - spent and (best is None or gain * best[1] > best[0] * added):
                    best = (gain, added, path, new)
        if best is None:
            return ranks
        _, added, path, new = best
        ranks[path], spent = new, spent + added
        open_steps[path] = by_path[path].steps(new)


def fraction_ranks(
    dims: dict[str, tuple[int, int]], budget: int, core: bool = True
) -> tuple[dict[str, int], float]:
    """One rank fraction f for every layer, r_l = ceil(f * min(n_l, m_l)) (CondLR's rule with
    f = 1 - cr), at the largest f whose total cost fits `budget`; the leftover is then filled one
    rank at a time, lowest r_l / min(n_l, m_l) first, while it fits. Returns (ranks, f)."""

    def at(f: float) -> dict[str, int]:
        return {p: max(1, math.ceil(f * min(n, m) - 1e-9)) for p, (n, m) in dims.items()}

    def total(ranks: dict[str, int]) -> int:
        return sum(matrix_cost(n, m, ranks[p], core) for p, (n, m) in dims.items())

    if total(at(0.0)) > budget:
        raise RbenchError(
            f"even rank 1 everywhere stores {total(at(0.0))} weights, more than the budget of "
            f"{budget}"
        )
    fractions = sorted({r / min(n, m) for n, m in dims.values() for r in range(1, min(n, m) + 1)})
    lo, hi = 0, len(fractions) - 1  # total(at(f)) grows with f: bisect for the largest that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total(at(fractions[mid])) <= budget else (lo, mid - 1)
    f = fractions[lo] if total(at(fractions[lo])) <= budget else 0.0
    ranks, spent = at(f), total(at(f))
    while True:
        open_ = [
            p
            for p, (n, m) in dims.items()
            if ranks[p] < min(n, m)
            and matrix_cost(n, m, ranks[p] + 1, core) - matrix_cost(n, m, ranks[p], core)
            <= budget - spent
        ]
        if not open_:
            return ranks, f
        p = min(open_, key=lambda q: ranks[q] / min(dims[q]))
        n, m = dims[p]
        spent += matrix_cost(n, m, ranks[p] + 1, core) - matrix_cost(n, m, ranks[p], core)
        ranks[p] += 1
