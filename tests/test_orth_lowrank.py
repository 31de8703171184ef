"""orth-lowrank (CondLR): the constraints after every optimiser step, the ranks from a parameter
ratio, and the method end to end on the embedded digits."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import DIGITS_SHAPE, assert_reloads_exactly, new_digits_model

from rbench.core.budget import Budget, compressible_layers, measure_compression
from rbench.core.errors import RbenchError
from rbench.layers import finalize
from rbench.layers.factorised import USVConv, USVLinear
from rbench.methods.orth_lowrank import (
    CondLRSGD,
    OrthLowRank,
    OrthLowRankConfig,
    constraint_errors,
    factors,
    select_ranks,
    to_usv,
)
from rbench.train.trainer import StepHooks


@pytest.mark.parametrize(("mode", "tau"), [("approx", 0.1), ("approx", 0.5), ("mean", 0.0)])
def test_bases_orthonormal_and_core_conditioned_after_every_step(
    trained_digits_model, make_ctx, mode, tau
):
    model = trained_digits_model
    ranks, _, _ = select_ranks(model, 4)
    to_usv(model, ranks, "dense-svd", torch.Generator().manual_seed(0))
    optimizer = CondLRSGD(model, lr=0.05, momentum=0.9, tau=tau, mode=mode)
    seen = []
    ctx = make_ctx(ratio=4, epochs=0.5)
    ctx.fit(
        model,
        epochs=0.25,  # natural loss: 2 AT-epochs' worth of steps at 1/8 the price
        lr=0.05,
        optimizer=optimizer,
        loss="ce",
        hooks=StepHooks(after_step=lambda m: seen.append(constraint_errors(m))),
    )
    assert len(seen) >= 4
    for orthogonality, condition in seen:
        assert orthogonality <= 1e-5
        assert condition <= (1 + tau) * (1 + 1e-5)
    if mode == "approx":  # the band is used, not collapsed to 1
        assert max(c for _, c in seen) > 1 + tau / 2


def test_basis_gradients_are_projected_onto_the_tangent_space(trained_digits_model):
    model = trained_digits_model
    ranks, _, _ = select_ranks(model, 4)
    to_usv(model, ranks, "dense-svd", torch.Generator().manual_seed(0))
    optimizer = CondLRSGD(model, lr=0.0, momentum=0.0, tau=0.1, mode="approx")
    model(torch.rand(16, *DIGITS_SHAPE)).square().sum().backward()
    layer = next(m for m in model.modules() if isinstance(m, USVConv))
    optimizer._project_gradients(layer)
    u, _, vt = factors(layer)
    g_u = layer.u.weight.grad.view_as(u)
    g_vt = layer.v.weight.grad.view_as(vt)
    assert (u.T @ g_u).abs().max() < 1e-6 and (g_vt @ vt.T).abs().max() < 1e-6
    assert g_u.abs().max() > 0


@pytest.mark.parametrize("ratio", [2, 4, 8, 16, 32])
def test_ranks_meet_the_parameter_ratio_with_a_full_rank_last_layer(ratio):
    model = new_digits_model()
    ranks, f, last = select_ranks(model, ratio)
    to_usv(model, ranks, "random", torch.Generator().manual_seed(0))
    measured = measure_compression(new_digits_model(), model, DIGITS_SHAPE)
    assert ratio <= measured["ratio"] <= ratio * 1.1
    *_, last_path = compressible_layers(new_digits_model())
    # 27,768 weights; the full-rank 100 -> 10 layer stores 1,200, the others need 753 at rank 1:
    # it fits up to ratio 8, beyond that the last layer takes the common fraction
    assert last == ("full-rank" if ratio <= 8 else "low-rank (fallback)")
    assert ranks[last_path] == 10 if ratio <= 8 else ranks[last_path] < 10
    assert 0 < f <= 1


def test_check_refuses_a_ratio_rank_one_cannot_reach():
    # rank 1 everywhere stores 864 weights: ratio 32.1 at most
    OrthLowRank().check(new_digits_model(), Budget(ratio=32, epochs=1))
    with pytest.raises(RbenchError, match="cannot reach ratio 40"):
        OrthLowRank().check(new_digits_model(), Budget(ratio=40, epochs=1))


@pytest.mark.parametrize("variant", ["harness", "paper"])
def test_orth_lowrank_compresses_within_budget_and_reloads(
    trained_digits_model, make_ctx, tmp_path, variant
):
    ratio = 4
    ctx = make_ctx(ratio=ratio, epochs=0.5)
    cfg = OrthLowRankConfig(variant=variant, tau=0.5)
    out = finalize(OrthLowRank(cfg).compress(copy.deepcopy(trained_digits_model), ctx.budget, ctx))
    out.eval()
    measured = measure_compression(trained_digits_model, out, DIGITS_SHAPE)
    assert ratio <= measured["ratio"]
    assert ctx.meter.used_epochs <= 0.5 * 1.05
    report = json.loads(json.dumps(ctx.report))
    assert report["max_orthogonality_error"] <= 1e-5
    assert report["max_condition_number_S"] <= 1.5 * (1 + 1e-5)
    assert math.isclose(report["paper_cr"], 1 - report["rank_fraction"])
    assert all(isinstance(m, (USVLinear, USVConv)) for m in _factorised(out))
    if variant == "paper":
        assert report["selected_epoch"] is not None
    assert_reloads_exactly(out, new_digits_model(), tmp_path)


def _factorised(model):
    return [m for m in model.modules() if isinstance(m, (USVLinear, USVConv))]
