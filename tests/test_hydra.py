"""HYDRA: scores train with the weights frozen, then the surviving weights fine-tune with the mask
fixed; the model stores exactly floor(N/B) weights within the budget."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import new_digits_model
from torch import nn

from rbench.core.budget import compressible_layers, measure_compression, verify_ratio
from rbench.layers import finalize, masks_of
from rbench.methods.hydra import Hydra, HydraConfig
from rbench.train.scores import attach_scores, freeze_weights, score_masks, scores_to_masks


def test_score_mask_keeps_k_weights_and_passes_gradient_straight_through():
    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    weight = layer.weight.detach().clone()
    model = nn.Sequential(layer)
    attach_scores(model, {"0": 37})
    freeze_weights(model)
    mask = score_masks(model)["0"]
    assert int(mask.sum()) == 37
    # the scaled score init selects the magnitude mask
    magnitude = torch.zeros(200, dtype=torch.bool)
    magnitude[weight.abs().flatten().topk(37).indices] = True
    assert torch.equal(mask.flatten(), magnitude)
    assert torch.equal(layer.weight, weight * mask)
    layer(torch.randn(8, 20)).pow(2).sum().backward()
    scores = layer.parametrizations.weight[0].scores
    assert scores.grad is not None
    assert (scores.grad[~mask] != 0).any(), "pruned entries' scores must get a gradient too"
    assert layer.parametrizations.weight.original.grad is None
    assert layer.bias.grad is None


def test_prune_phase_trains_scores_with_weights_frozen(trained_digits_model, make_ctx):
    model, ctx = trained_digits_model, make_ctx(ratio=8, epochs=6.0)  # 1 epoch of scores
    method = Hydra()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attach_scores(model, method.plan(model, 8))
    initial = score_masks(model)
    scores0 = [p.detach().clone() for n, p in model.named_parameters() if n.endswith("scores")]
    method.prune(model, ctx)
    for path, module in compressible_layers(model).items():
        assert torch.equal(module.parametrizations.weight.original, before[f"{path}.weight"])
        assert torch.equal(module.bias, before[f"{path}.bias"])
    scores1 = [p.detach() for n, p in model.named_parameters() if n.endswith("scores")]
    assert all(not torch.equal(a, b) for a, b in zip(scores0, scores1, strict=True))
    after = score_masks(model)
    assert any(not torch.equal(initial[p], after[p]) for p in initial), "the mask never moved"
    assert all(int(after[p].sum()) == int(initial[p].sum()) for p in initial)
    assert 0.9 < ctx.meter.used_epochs <= 1.05


def test_finetune_keeps_the_mask_fixed_and_trains_survivors(trained_digits_model, make_ctx):
    model, ctx = trained_digits_model, make_ctx(ratio=8, epochs=1.0)
    method = Hydra()
    attach_scores(model, method.plan(model, 8))
    masks = scores_to_masks(model)
    assert all(p.requires_grad for p in model.parameters())
    before = {p: m.weight.detach().clone() for p, m in compressible_layers(model).items()}
    method.finetune(model, ctx)
    assert masks_of(model).keys() == masks.keys()
    for path, module in compressible_layers(model).items():
        assert torch.equal(module.weight_mask.bool(), masks[path])
        assert (module.weight_orig[~masks[path]] == 0).all()
        assert not torch.equal(module.weight.detach(), before[path])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["harness", "paper"])
def test_hydra_reaches_the_ratio_exactly_within_budget(trained_digits_model, make_ctx, variant):
    dense = new_digits_model()
    ctx = make_ctx(ratio=16, epochs=1.0)
    model = finalize(
        Hydra(HydraConfig(variant=variant)).compress(trained_digits_model, ctx.budget, ctx)
    )
    report = measure_compression(dense, model, (1, 8, 8))
    verify_ratio(report, 16, "hydra")
    assert report["n_stored"] == math.floor(report["n_dense"] / 16)
    assert 0.9 <= ctx.meter.used_epochs <= 1.05, "the method should spend its budget"
