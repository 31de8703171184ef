"""lth-adv: the round schedule (rate p per round, output layer at p/2, last round cut exactly to
floor(N/B)), magnitude pruning among the survivors of each round, rewinding of the survivors to
the chosen point (a fresh seeded theta_0, or the trained round-0 network), and the exact ratio as
the harness measures it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import FitSpy

from rbench.core.budget import compressible_layers, effective_weight, measure_compression
from rbench.core.suites import get_suite
from rbench.layers import finalize
from rbench.methods import get_method
from rbench.methods.lth_adv import LTHAdv, LTHAdvConfig, draw_init, round_schedule

SMALLCNN_28 = {"c1": 144, "c2": 4608, "c3": 9216, "fc1": 156800, "out": 1000}


@pytest.mark.parametrize("ratio", [1.5, 2, 4, 16, 32])
def test_schedule_prunes_the_scheduled_fraction_and_ends_exactly(ratio):
    p = 0.2
    rates = {k: p / 2 if k == "out" else p for k in SMALLCNN_28}
    schedule = round_schedule(SMALLCNN_28, ratio, rates)
    uniform = round_schedule(SMALLCNN_28, ratio, dict.fromkeys(SMALLCNN_28, p))
    assert len(uniform) == math.ceil(math.log(ratio) / -math.log(1 - p))  # methods.md's R
    previous = SMALLCNN_28
    for counts in schedule[:-1]:
        for layer, c in counts.items():
            assert c == previous[layer] - round(rates[layer] * previous[layer])
        previous = counts
    last = schedule[-1]
    assert sum(last.values()) == math.floor(sum(SMALLCNN_28.values()) / ratio)
    assert all(0 < last[k] <= previous[k] for k in last)
    if len(schedule) > 1:  # the output layer keeps more: it is pruned at half the rate
        assert last["out"] / SMALLCNN_28["out"] > last["fc1"] / SMALLCNN_28["fc1"]


def _state(model):
    """The effective weights, biases and masks of the compressible layers."""
    layers = compressible_layers(model)
    return {
        "w": {p: effective_weight(m).detach().clone() for p, m in layers.items()},
        "b": {p: m.bias.detach().clone() for p, m in layers.items() if m.bias is not None},
        "mask": {
            p: getattr(m, "weight_mask", torch.ones_like(m.weight)).bool().clone()
            for p, m in layers.items()
        },
    }


@pytest.mark.parametrize("rewind_to", ["init", "round0_trained"])
def test_rounds_prune_by_magnitude_and_rewind_the_survivors(
    rewind_to, trained_digits_model, make_ctx
):
    ratio = 2.0
    dense = copy.deepcopy(trained_digits_model)
    ctx = make_ctx(ratio=ratio, epochs=0.6)
    spy = FitSpy(ctx, _state)
    method = LTHAdv(LTHAdvConfig(rewind_to=rewind_to))
    model = method.compress(copy.deepcopy(dense), ctx.budget, ctx)

    schedule = round_schedule(
        {p: m.weight.numel() for p, m in compressible_layers(dense).items()},
        ratio,
        method.rates(dense),
    )
    calls = spy.calls
    if rewind_to == "init":
        theta = calls[0]["before"]
        fresh = draw_init(dense, ctx.generator("lth-adv/theta0"))
        for p in theta["w"]:
            assert torch.equal(theta["w"][p], fresh[f"{p}.weight"])  # the seeded theta_0
            assert not torch.allclose(theta["w"][p], dict(dense.named_parameters())[f"{p}.weight"])
        pruning_calls = calls[1:]
        before_first = calls[0]["after"]
    else:
        theta = before_first = _state(dense)  # the trained round-0 network, at no cost
        pruning_calls = calls
    assert len(pruning_calls) == len(schedule)

    previous = before_first
    for call, counts in zip(pruning_calls, schedule, strict=True):
        start = call["before"]
        for p, mask in start["mask"].items():
            assert int(mask.sum()) == counts[p]  # the scheduled count
            assert not (mask & ~previous["mask"][p]).any()  # survivors of the last round only
            # the largest |w| of the previous round's trained weights survive
            w = previous["w"][p].abs()
            pruned_now = w[previous["mask"][p] & ~mask]
            assert pruned_now.numel() > 0 and w[mask].min() >= pruned_now.max()
            # rewound: survivors carry theta's values, pruned weights are zero
            assert torch.equal(start["w"][p], theta["w"][p] * mask)
        for p, b in start["b"].items():
            assert torch.equal(b, theta["b"][p])
        previous = call["after"]

    dense_n = sum(m.weight.numel() for m in compressible_layers(dense).values())
    report = measure_compression(dense, finalize(model), get_suite("digits").data.input_shape)
    assert report["n_stored"] == math.floor(dense_n / ratio)
    assert ctx.meter.used_epochs <= ctx.budget.epochs * 1.05
    assert [r["kept"] for r in ctx.report["rounds"] if "kept" in r][-1] == report["n_stored"]


def test_paper_variant_trains_each_round_with_a_fresh_adam_and_the_mixed_loss(
    trained_digits_model, make_ctx
):
    ctx = make_ctx(ratio=1.5, epochs=0.4)
    spy = FitSpy(ctx, _state)
    method = get_method("lth-adv")(LTHAdvConfig(variant="paper", rewind_to="round0_trained"))
    method.compress(trained_digits_model, ctx.budget, ctx)
    assert len(spy.calls) == 2  # R = ceil(ln 1.5 / -ln 0.8) rounds, no round 0
    for call in spy.calls:
        kw = call["kwargs"]
        assert kw["optimizer"] == "adam"  # a name: fit builds a new optimiser, state reset
        assert (kw["lr"], kw["batch_size"], kw["label_smoothing"]) == (1.2e-3, 60, 0.1)
        assert kw["loss"] == "mixed"


def test_unreachable_ratio_is_refused_before_training(trained_digits_model):
    from rbench.core.budget import Budget
    from rbench.core.errors import RbenchError

    n = sum(m.weight.numel() for m in compressible_layers(trained_digits_model).values())
    with pytest.raises(RbenchError):
        LTHAdv().check(trained_digits_model, Budget(ratio=n, epochs=1))
