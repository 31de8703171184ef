"""sparse-robust (dynamic network surgery): the forward uses W .* T while the gradient reaches
every entry of W; weights whose magnitude recovers above 1.1 thr are spliced back and those that
fall to 0.9 thr are pruned; the update probability decays and the masks freeze after iter_stop;
the calibrated thresholds give the budget's density; the result stores exactly floor(N/B)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FitSpy
from torch import nn
from torch.nn.utils import parametrize

from rbench.core.budget import Budget, compressible_layers, measure_compression
from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.layers import finalize, keep_counts
from rbench.methods.sparse_robust import (
    SparseRobust,
    SparseRobustConfig,
    SpliceMask,
    Surgery,
    dns_thresholds,
)


def test_splice_mask_forward_is_masked_and_gradient_reaches_every_weight():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    mask = torch.rand(4, 6) > 0.5
    raw = layer.weight.detach().clone()
    parametrize.register_parametrization(layer, "weight", SpliceMask(mask))
    x = torch.randn(5, 6)
    out = layer(x)
    assert torch.allclose(out, F.linear(x, raw * mask, layer.bias))
    effective = (raw * mask).requires_grad_(True)
    F.linear(x, effective, layer.bias).square().sum().backward()
    out.square().sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert torch.allclose(grad, effective.grad)  # the full gradient, pruned entries included
    assert grad[~mask].abs().sum() > 0


def _surgery(model, ratio=4.0, **kwargs):
    sizes = {p: m.weight.numel() for p, m in compressible_layers(model).items()}
    targets = keep_counts(sizes, ratio, exact=True)
    thresholds, _ = dns_thresholds(model, targets, None)
    options = {"gamma": 0.0, "power": 1.0, "iter_stop": 10_000} | kwargs
    surgery = Surgery(model, thresholds, generator=torch.Generator().manual_seed(0), **options)
    return surgery, targets, thresholds


def test_calibrated_thresholds_give_the_budget_density(trained_digits_model):
    surgery, targets, _ = _surgery(trained_digits_model)
    surgery.step()
    assert surgery.nonzeros() == targets


def test_surgery_splices_back_recovered_weights_and_prunes_fallen_ones(trained_digits_model):
    surgery, _, thresholds = _surgery(trained_digits_model)
    surgery.step()
    path = "net.1"
    raw, mask, thr = surgery.raw(path), surgery.mask(path), thresholds[path]
    pruned = (~mask).nonzero()[:3]
    kept = mask.nonzero()[:3]
    with torch.no_grad():
        raw[pruned[0][0], pruned[0][1]] = -1.2 * thr  # recovered: spliced back
        raw[pruned[1][0], pruned[1][1]] = 1.0 * thr  # inside the hysteresis band: stays out
        raw[kept[0][0], kept[0][1]] = 0.85 * thr  # fallen: pruned
        raw[kept[1][0], kept[1][1]] = 1.0 * thr  # inside the band: stays in
    surgery.step()
    assert mask[pruned[0][0], pruned[0][1]] and not mask[pruned[1][0], pruned[1][1]]
    assert not mask[kept[0][0], kept[0][1]] and mask[kept[1][0], kept[1][1]]
    assert surgery.updates[-1]["spliced"] >= 1 and surgery.updates[-1]["pruned"] >= 1


def test_masks_freeze_after_iter_stop(trained_digits_model):
    frozen, _, _ = _surgery(copy.deepcopy(trained_digits_model), iter_stop=2)
    control, _, _ = _surgery(copy.deepcopy(trained_digits_model), iter_stop=10)
    for surgery in (frozen, control):
        surgery.step()
        surgery.step()  # t = 0, 1: updates
        with torch.no_grad():  # a different magnitude pattern: the rule would move the masks
            for path in surgery.layers:
                raw = surgery.raw(path)
                raw.copy_(raw.flatten().flip(0).view_as(raw))
        before = {p: surgery.mask(p).clone() for p in surgery.layers}
        surgery.step()  # t = 2
        changed = any(not torch.equal(before[p], surgery.mask(p)) for p in surgery.layers)
        assert changed == (surgery is control)
    assert [u["t"] for u in frozen.updates] == [0, 1]


def test_update_probability_decays(trained_digits_model):
    decaying, _, _ = _surgery(copy.deepcopy(trained_digits_model), gamma=1.0, power=1.0)
    always, _, _ = _surgery(copy.deepcopy(trained_digits_model), gamma=0.0)
    for _ in range(200):
        decaying.step()
        always.step()
    assert len(always.updates) == 200
    assert decaying.updates[0]["t"] == 0 and len(decaying.updates) < 40  # E = sum 1/(1+t) ~ 5.9


def _raw(layer: nn.Module) -> torch.Tensor:
    """The raw W of a layer under the splice parametrisation or a prune mask."""
    if parametrize.is_parametrized(layer):
        return layer.parametrizations.weight.original.detach().clone()
    return layer.weight_orig.detach().clone()


def _net1(model: nn.Module) -> dict:
    """net.1's raw W and, while DNS parametrises it, its mask T."""
    layer = compressible_layers(model)["net.1"]
    spliced = parametrize.is_parametrized(layer)
    return {
        "raw": _raw(layer),
        "mask": layer.parametrizations.weight[0].mask.clone() if spliced else None,
    }


@pytest.mark.parametrize("variant", ["harness", "paper"])
def test_compress_reaches_the_ratio_exactly_and_freezes_masks(
    variant, trained_digits_model, make_ctx
):
    ratio = 4.0
    dense = copy.deepcopy(trained_digits_model)
    ctx = make_ctx(ratio=ratio, epochs=0.5)
    spy = FitSpy(ctx, _net1)
    # no weight decay: pruned weights can only move through the spliced gradient
    method = SparseRobust(SparseRobustConfig(variant=variant, iter_stop=3, weight_decay=0.0))
    model = method.compress(copy.deepcopy(dense), ctx.budget, ctx)

    dns, retrain = spy.calls
    assert (
        dns["kwargs"]["loss"]
        == retrain["kwargs"]["loss"]
        == ("ce" if variant == "paper" else "adv")
    )
    pruned = ~dns["after"]["mask"]
    moved = dns["after"]["raw"][pruned] != dns["before"]["raw"][pruned]
    assert moved.any()  # pruned W still learn
    assert ctx.report["dns_iterations"] > 3 and ctx.report["masks_frozen_at"] == 3
    assert 1 <= ctx.report["mask_updates"] <= 3  # only at t = 0, 1, 2
    retrained, before = retrain["after"]["raw"], retrain["before"]["raw"]
    assert (retrained[before == 0] == 0).all()  # mask fixed, re-zeroed

    n = sum(m.weight.numel() for m in compressible_layers(dense).values())
    report = measure_compression(dense, finalize(model), get_suite("digits").data.input_shape)
    assert report["n_stored"] == math.floor(n / ratio)
    assert ctx.meter.used_epochs <= ctx.budget.epochs * 1.05
    assert SparseRobust.native_metrics == ("deepfool_l2", "cw_l2", "fgsm")


def test_unreachable_ratio_is_refused_before_training(trained_digits_model):
    n = sum(m.weight.numel() for m in compressible_layers(trained_digits_model).values())
    with pytest.raises(RbenchError):
        SparseRobust().check(trained_digits_model, Budget(ratio=n, epochs=1))
