"""RADMM: the projection hits each layer's count exactly, the filter variant removes whole
filters, the ADMM steps are the textbook ones, and compress reaches floor(N/B) within budget."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import new_digits_model

from rbench.core.budget import Budget, compressible_layers, measure_compression, verify_ratio
from rbench.core.errors import RbenchError
from rbench.layers import finalize
from rbench.layers.structured import KeptFilters
from rbench.methods.radmm import (
    RADMM,
    RADMMConfig,
    admm_lr_factor,
    filter_mask,
    irregular_mask,
    projection,
)
from rbench.train.admm import ADMM, layer_weights


def _rows(mask: torch.Tensor) -> tuple[int, int, int]:
    """(whole rows, empty rows, partial rows) of a mask as W_mat."""
    kept = mask.flatten(1).sum(1)
    size = mask.flatten(1).shape[1]
    return (
        int((kept == size).sum()),
        int((kept == 0).sum()),
        int(((kept > 0) & (kept < size)).sum()),
    )


@pytest.mark.parametrize("structure", ["irregular", "filter"])
@pytest.mark.parametrize("ratio", [4, 16, 40])
def test_projection_hits_the_per_layer_count_exactly(structure, ratio):
    model = new_digits_model()
    method = RADMM(RADMMConfig(structure=structure))
    counts = method.plan(model, ratio)
    layers = compressible_layers(model)
    assert sum(counts.values()) == math.floor(
        sum(m.weight.numel() for m in layers.values()) / ratio
    )
    # uniform density: every layer within one weight of numel / ratio (rounding)
    for path, k in counts.items():
        assert abs(k - layers[path].weight.numel() / ratio) <= 1
    project = projection(counts, structure, True, list(layers)[-1])
    for path, module in layers.items():
        z = project(path, module.weight.detach() + 0.01)
        assert int(torch.count_nonzero(z)) == counts[path]


def test_irregular_projection_keeps_the_largest_magnitudes():
    w = torch.randn(6, 5)
    mask = irregular_mask(w, 7)
    assert int(mask.sum()) == 7
    assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_filter_projection_removes_whole_filters():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    w[3] *= 5  # a filter of large norm must survive
    k = 5 * 72 + 10  # five whole filters and a remainder
    mask = filter_mask(w, k)
    assert int(mask.sum()) == k
    assert _rows(mask) == (5, 10, 1)
    assert mask[3].all()
    norms = w.flatten(1).norm(dim=1)
    whole = mask.flatten(1).all(1)
    assert norms[whole].min() >= norms[~whole].max()
    assert _rows(filter_mask(w, k, exact=False)) == (5, 11, 0)


@pytest.mark.slow
def test_filter_variant_compress_removes_whole_filters_at_exact_ratio(
    trained_digits_model, make_ctx
):
    ratio, dense = 8, new_digits_model()
    ctx = make_ctx(ratio=ratio, epochs=1.0)
    method = RADMM(RADMMConfig(structure="filter"))
    model = finalize(method.compress(trained_digits_model, ctx.budget, ctx))
    *hidden, classifier = compressible_layers(dense)
    for path in hidden:  # the pruned filters are gone: only whole filters and one partial remain
        module = model.get_submodule(path)
        assert isinstance(module, KeptFilters), f"{path}: filters not dropped"
        whole, empty, partial = _rows(module.layer.weight != 0)
        assert partial <= 1 and empty == 0
        assert whole + partial == len(module.kept) < module.width
        assert ctx.report["dropped_filters"][path] == module.width - len(module.kept)
    report = measure_compression(dense, model, (1, 8, 8))
    verify_ratio(report, ratio, "radmm")
    assert report["n_stored"] == math.floor(report["n_dense"] / ratio)
    assert report["macs_ratio"] > 2
    assert 0.9 <= ctx.meter.used_epochs <= 1.05
    # 10 ADMM rounds in the ADMM half of the budget: 9 interior Z-updates where the trainer's
    # floor-counted steps leave room for them (here 0.5 x 19 batches = 9 steps: 8 fit)
    steps = math.floor(0.5 * len(ctx.loader("train")) + 1e-9)
    expected = {math.floor(i * steps / 10) for i in range(1, 10)} - {0, steps}
    assert ctx.report["admm_updates"] == len(expected) == min(9, steps - 1)


@pytest.mark.slow
def test_irregular_compress_reaches_the_ratio_exactly_within_budget(trained_digits_model, make_ctx):
    dense = new_digits_model()
    ctx = make_ctx(ratio=16, epochs=1.0)
    model = finalize(RADMM().compress(trained_digits_model, ctx.budget, ctx))
    report = measure_compression(dense, model, (1, 8, 8))
    verify_ratio(report, 16, "radmm")
    assert report["n_stored"] == math.floor(report["n_dense"] / 16)
    for row in report["per_layer"]:
        assert abs(row["stored"] - row["dense"] / 16) <= 1
    assert 0.9 <= ctx.meter.used_epochs <= 1.05


def test_admm_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 6))
    counts = {"0": 12}
    project = projection(counts, "irregular", True, "0")
    admm = ADMM(model, layer_weights(counts), project, rho=0.5, rho_growth=1.3)
    w = model[0].weight
    assert int(torch.count_nonzero(admm.Z["0"])) == 12 and not admm.U["0"].any()
    # the penalty's gradient is rho (W - Z + U)
    admm.penalty(model).backward()
    assert torch.allclose(w.grad, 0.5 * (w - admm.Z["0"]).detach())
    with torch.no_grad():
        w.add_(0.1 * torch.randn_like(w))
    u_before = admm.U["0"].clone()
    admm.update(model)
    assert admm.rho["0"] == pytest.approx(0.65)
    assert torch.equal(admm.Z["0"], project("0", w.detach() + u_before))
    assert torch.allclose(admm.U["0"], u_before + w.detach() - admm.Z["0"])


def test_admm_learning_rate_restarts_each_round():
    factor = admm_lr_factor(rounds=4)
    assert factor(0.0) == 1.0 and factor(0.25) == 1.0 and factor(0.5) == 1.0
    assert factor(0.1) == pytest.approx(0.1) and factor(0.2) == pytest.approx(0.01)


def test_conv_only_setting_is_refused_before_training_when_unreachable():
    model = new_digits_model()
    method = RADMM(RADMMConfig(layers="conv"))
    with pytest.raises(RbenchError, match="layers=conv"):
        method.check(model, Budget(ratio=16, epochs=1))
    method.check(model, Budget(ratio=1.05, epochs=1))  # FC dense fits at a mild ratio
    counts = method.plan(model, 1.05)
    assert all(isinstance(compressible_layers(model)[p], torch.nn.Conv2d) for p in counts)
