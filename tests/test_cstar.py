"""cstar: the budget check, the projected decomposition, ADMM, and the method end to end on the
embedded digits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import DIGITS_SHAPE, assert_reloads_exactly, new_digits_model

from rbench.core.budget import Budget, compressible_layers, measure_compression
from rbench.core.errors import RbenchError
from rbench.layers import finalize
from rbench.methods.cstar import (
    Cstar,
    CstarConfig,
    admm_phase,
    decompose,
    dense_layers,
    projector,
    select_ranks,
    update_steps,
)


def test_check_keeps_first_and_last_dense_falls_back_then_refuses():
    model = new_digits_model()
    first, *_, last = compressible_layers(model)
    assert dense_layers(model, 16, CstarConfig()) == [first, last]
    # 27,768 weights: at 32 the dense first conv + last linear (1,144) exceed 867
    assert dense_layers(model, 32, CstarConfig()) == [first]
    with pytest.raises(RbenchError, match="cannot reach ratio 100"):
        Cstar().check(model, Budget(ratio=100, epochs=1))


def test_factorised_model_equals_the_projected_dense_model_before_fine_tuning(
    trained_digits_model,
):
    model, cfg = trained_digits_model, CstarConfig(hooi_sweeps=1)
    ranks = select_ranks(model, 8, dense_layers(model, 8, cfg))
    projected = copy.deepcopy(model)
    project = projector(ranks, cfg.hooi_sweeps)
    with torch.no_grad():
        for path, layer in compressible_layers(projected).items():
            if path in ranks:
                layer.weight.copy_(project(path, layer.weight))

    class Report:
        report: dict = {}

    factorised = decompose(copy.deepcopy(model), ranks, cfg, Report()).eval()
    x = torch.rand(16, *DIGITS_SHAPE)
    assert torch.allclose(factorised(x), projected.eval()(x), atol=1e-4)
    assert not torch.allclose(projected(x), model(x), atol=1e-3)  # the projection did something
    measured = measure_compression(model, factorised, DIGITS_SHAPE)
    assert measured["ratio"] >= 8


def test_update_steps_per_variant():
    assert update_steps(CstarConfig(variant="paper"), 2.5, 10) == [10, 20]
    assert update_steps(CstarConfig(variant="paper"), 0.5, 10) == []
    steps = update_steps(CstarConfig(admm_updates=4), 0.5, 20)
    assert steps == [2, 4, 6, 8]


def test_admm_pulls_the_weights_towards_the_tucker_set(trained_digits_model, make_ctx):
    model, cfg = trained_digits_model, CstarConfig(admm_updates=3, admm_share=1.0)
    ranks = select_ranks(model, 8, dense_layers(model, 8, cfg))
    ctx = make_ctx(ratio=8, epochs=3.0)
    admm_phase(model, ranks, cfg, ctx)
    assert ctx.report["admm_updates"] == 3
    assert ctx.report["admm_residual_end"] < 0.5 * ctx.report["admm_residual_start"]
    assert ctx.meter.used_epochs <= 3.0 * 1.05


@pytest.mark.parametrize("variant", ["harness", "paper"])
def test_cstar_compresses_within_budget_and_reloads(
    trained_digits_model, make_ctx, tmp_path, variant
):
    ratio = 8
    ctx = make_ctx(ratio=ratio, epochs=0.6)
    method = Cstar(CstarConfig(variant=variant))
    out = finalize(method.compress(copy.deepcopy(trained_digits_model), ctx.budget, ctx)).eval()
    measured = measure_compression(trained_digits_model, out, DIGITS_SHAPE)
    assert ratio <= measured["ratio"]
    assert ctx.meter.used_epochs <= 0.6 * 1.05
    assert ctx.report["ranks"] and ctx.report["dense_layers"]
    json.dumps(ctx.report)  # lands in the record as JSON
    structure = assert_reloads_exactly(out, new_digits_model(), tmp_path)
    assert {s["type"] for s in structure.values()} == {"Tucker2Conv", "LowRankLinear"}


def test_cstar_on_a_batchnorm_model_reestimates_the_statistics(make_ctx):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 10),
    )
    ctx = make_ctx(ratio=4, epochs=0.4)
    before, dense = model[4].running_var.clone(), copy.deepcopy(model)
    out = Cstar(CstarConfig(bn_batches=2)).compress(model, ctx.budget, ctx)
    assert ctx.report["batchnorm_reestimated"] == 2
    assert not torch.allclose(out[4].running_var, before)
    assert type(out[3]).__name__ == "Tucker2Conv" and out[3].core.stride == (2, 2)
    assert measure_compression(dense, out, DIGITS_SHAPE)["ratio"] >= 4
