"""Method-specific traits that a one-line change could silently remove, each pinned: the ADMM dual
inside the projection step (and the U-step's sign), the updates' placement in radmm, lth-adv's
output layer at half the pruning rate, HYDRA's scaled magnitude score init inside `compress`,
CondLR's QR sign fix and its best-checkpoint restore (the only paper variant that keeps one),
and exactly floor(N/B) weights for the magnitude-style masks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import new_digits_model
from torch import nn

from rbench.core.budget import compressible_layers, measure_compression
from rbench.layers import (
    apply_masks,
    keep_counts,
    magnitude_masks,
    mask_gradients,
    masks_of,
    reapply_masks,
)
from rbench.methods.hydra import Hydra
from rbench.methods.lth_adv import LTHAdv, LTHAdvConfig
from rbench.methods.magnitude import Magnitude, MagnitudeConfig
from rbench.methods.orth_lowrank import (
    CondLRSGD,
    OrthLowRank,
    OrthLowRankConfig,
    _orthonormal,
    factors,
    select_ranks,
    to_usv,
)
from rbench.methods.radmm import RADMM, mask_agreement, projection
from rbench.methods.random_pruning import RandomPruning
from rbench.train.admm import ADMM, layer_weights
from rbench.train.scores import _score_layers

# ------------------------------------------------------------------ ADMM


def _vector_model(values) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([values]))
    return model


def test_the_dual_reaches_the_projection_step_and_the_penalty():
    """Two updates: after the first the dual is non-zero, so the second Z-step must project
    W + U (a different support than W alone), and U must grow by W - Z."""
    model = _vector_model([3.0, 2.0, 1.0, 0.5])
    project = projection({"0": 2}, "irregular", True, "0")
    admm = ADMM(model, layer_weights({"0": 2}), project, rho=0.5, rho_growth=2.0)
    w = model[0].weight
    admm.update(model)
    assert torch.equal(admm.U["0"], torch.tensor([[0.0, 0.0, 1.0, 0.5]]))
    with torch.no_grad():
        w.copy_(torch.tensor([[1.4, 2.5, 1.1, 0.5]]))  # alone it keeps 2.5 and 1.4
    admm.update(model)
    assert torch.allclose(
        admm.Z["0"], torch.tensor([[0.0, 2.5, 2.1, 0.0]]), atol=1e-6
    )  # W + U keeps 2.5, 2.1
    assert torch.allclose(admm.U["0"], torch.tensor([[1.4, 0.0, 0.0, 1.0]]), atol=1e-6)
    assert admm.rho["0"] == 2.0 and admm.updates == 2
    w.grad = None
    admm.penalty(model).backward()  # d/dW rho/2 ||W - Z + U||^2 = rho (W - Z + U)
    assert torch.allclose(w.grad, 2.0 * (w - admm.Z["0"] + admm.U["0"]).detach())
    assert admm.penalty(model).item() == pytest.approx(
        1.0 * float((w.detach() - admm.Z["0"] + admm.U["0"]).pow(2).sum())
    )


def test_after_steps_updates_exactly_after_the_named_steps():
    model = _vector_model([3.0, 2.0, 1.0, 0.5])
    admm = ADMM(model, layer_weights(), projection({"0": 2}, "irregular", True, "0"))
    seen, step = [], {"n": 0}
    admm.update = lambda m: seen.append(step["n"])
    hook = admm.after_steps([2, 5])
    for step["n"] in range(1, 8):
        hook(model)
    assert seen == [2, 5]


def test_radmm_places_its_updates_with_floor_within_the_steps_it_trains(
    trained_digits_model, make_ctx, monkeypatch
):
    """ADMM gets half of 2.1 AT-epochs: 1.05 epochs of 19 batches, i.e. floor(19.95) = 19 steps;
    10 rounds put the 9 Z-updates after steps floor(i * 19 / 10) = 1, 3, ..., 17 (round would
    give 20 steps, or 2, 4, ..., 10, 11, ...)."""
    placed = []
    real = ADMM.after_steps
    monkeypatch.setattr(
        ADMM, "after_steps", lambda self, at: placed.append(set(at)) or real(self, at)
    )
    ctx = make_ctx(ratio=4, epochs=2.1)
    method = RADMM()
    admm = method.admm_phase(trained_digits_model, method.plan(trained_digits_model, 4), ctx)
    assert placed == [{1, 3, 5, 7, 9, 11, 13, 15, 17}]
    assert admm.updates == 9  # every placed update happened
    assert any(u.abs().sum() > 0 for u in admm.U.values())


def test_mask_agreement_is_the_share_of_kept_weights_kept_by_both():
    a = {"x": torch.tensor([True, True, False, False])}
    assert mask_agreement(a, a) == 1.0
    assert mask_agreement(a, {"x": torch.tensor([False, True, True, False])}) == 0.5
    assert mask_agreement(a, {"x": torch.tensor([False, False, True, True])}) == 0.0


# ------------------------------------------------------------------ lth-adv, HYDRA


def _no_training(ctx, record=None):
    """ctx.fit replaced by a recorder of the model at each call (nothing trains)."""
    calls = []

    def fit(model, **kwargs):
        calls.append(record(model) if record else kwargs)

    ctx.fit = fit
    return calls


def test_lth_output_layer_is_pruned_at_half_the_rate(trained_digits_model, make_ctx):
    method = LTHAdv(LTHAdvConfig(rewind_to="round0_trained"))
    layers = list(compressible_layers(trained_digits_model))
    assert method.rates(trained_digits_model) == {
        p: 0.1 if p == layers[-1] else 0.2 for p in layers
    }
    sizes = {p: m.weight.numel() for p, m in compressible_layers(trained_digits_model).items()}
    ctx = make_ctx(ratio=4)
    counts = lambda m: {p: int(k.sum()) for p, k in masks_of(m).items()}  # noqa: E731
    calls = _no_training(ctx, counts)
    method.compress(trained_digits_model, ctx.budget, ctx)
    first = calls[0]  # round 1: p of every hidden layer, p / 2 of the output layer
    assert first == {p: n - round((0.1 if p == layers[-1] else 0.2) * n) for p, n in sizes.items()}
    last = ctx.report["kept_per_layer"]
    density = {p: last[p] / sizes[p] for p in sizes}
    assert all(density[layers[-1]] > density[p] for p in layers[:-1])


def test_hydra_compress_starts_the_scores_at_the_scaled_magnitude_init(
    trained_digits_model, make_ctx
):
    dense = {
        p: m.weight.detach().clone() for p, m in compressible_layers(trained_digits_model).items()
    }

    def snapshot(model):
        return {p: (s.scores.detach().clone(), s.k) for p, (_, s) in _score_layers(model).items()}

    ctx = make_ctx(ratio=8)
    calls = _no_training(ctx, snapshot)
    Hydra().compress(trained_digits_model, ctx.budget, ctx)
    scores = calls[0]  # the score optimisation phase starts from them
    assert scores.keys() == dense.keys()
    sizes = {p: w.numel() for p, w in dense.items()}
    counts = keep_counts(sizes, 8, exact=True)
    for path, w in dense.items():
        s, k = scores[path]
        fan_in = w[0].numel()
        assert torch.allclose(s, math.sqrt(6.0 / fan_in) * w / w.abs().max())
        assert k == counts[path]
    assert calls[1] == {}  # fine-tuning: the scores are gone, fixed masks instead


# ------------------------------------------------------------------ CondLR


def _usv_model(trained_digits_model):
    model = copy.deepcopy(trained_digits_model)
    ranks, _, _ = select_ranks(model, 4)
    to_usv(model, ranks, "dense-svd", torch.Generator().manual_seed(0))
    return model


def test_qr_sign_fix_keeps_an_orthonormal_basis_as_it_is(trained_digits_model):
    m = torch.randn(30, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = _orthonormal(m)
    assert (torch.diagonal(q.T @ m) > 0).all()  # R of the QR with a positive diagonal
    assert torch.allclose(_orthonormal(q), q, atol=1e-12)
    model = _usv_model(trained_digits_model)
    layers = [m for m in model.modules() if hasattr(m, "dense_weight") and hasattr(m, "s")]
    with torch.no_grad():
        for layer in layers:  # a perfectly conditioned core: the clamp changes nothing
            _, s, _ = factors(layer)
            s.copy_(torch.eye(s.shape[0]))
    before = [tuple(f.detach().clone() for f in factors(layer)) for layer in layers]
    # without the sign fix a retraction would flip some of these columns (and the layer's map)
    assert any((torch.linalg.qr(u.double())[1].diagonal() < 0).any() for u, _, _ in before)
    optimizer = CondLRSGD(model, lr=0.0, momentum=0.0, tau=0.1, mode="approx")
    optimizer.step()
    for layer, (u, s, vt) in zip(layers, before, strict=True):
        u1, s1, vt1 = factors(layer)
        assert torch.allclose(u1, u, atol=1e-5) and torch.allclose(vt1, vt, atol=1e-5)
        assert torch.allclose(s1, s, atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "harness"])
def test_condlr_paper_restores_its_best_validation_epoch_and_harness_keeps_the_last(
    trained_digits_model, make_ctx, variant
):
    """Three natural epochs (0.375 AT-epochs at 8 natural epochs each) with validation accuracy
    scripted to peak at the second: the paper variant returns that epoch's weights."""
    ctx = make_ctx(ratio=4, epochs=0.375)
    states, scripted = [], iter([0.5, 0.9, 0.3])

    def accuracy(model, split="val"):
        states.append(copy.deepcopy(model.state_dict()))
        return next(scripted)

    ctx.accuracy = accuracy
    cfg = OrthLowRankConfig(variant=variant)
    model = OrthLowRank(cfg).compress(trained_digits_model, ctx.budget, ctx)
    final = model.state_dict()
    if variant == "paper":
        assert len(states) == 3 and ctx.report["selected_epoch"] == 1
        assert all(torch.equal(final[k], v) for k, v in states[1].items())
        assert not all(torch.equal(final[k], v) for k, v in states[2].items())
    else:
        assert states == [] and ctx.report["selected_epoch"] is None


# ------------------------------------------------------------------ exact floor(N / B)


@pytest.mark.parametrize("ratio", [3, 7.5, 13, 16, 33])
def test_magnitude_and_random_keep_exactly_floor_n_over_b(ratio):
    model = new_digits_model()
    layers = compressible_layers(model)
    n = sum(m.weight.numel() for m in layers.values())
    for masks in (
        magnitude_masks(model, ratio),
        Magnitude().masks(model, ratio, None),
        Magnitude(MagnitudeConfig(scope="global")).masks(model, ratio, None),
        RandomPruning().masks(model, ratio, None),
    ):
        assert sum(int(m.sum()) for m in masks.values()) == math.floor(n / ratio)
    for path, mask in magnitude_masks(model, ratio).items():
        w = layers[path].weight.detach().abs()
        assert abs(int(mask.sum()) - w.numel() / ratio) < 1 + 1e-9  # uniform density
        assert w[mask].min() >= w[~mask].max()  # the largest |w| survive


def test_masked_layers_get_no_gradient_and_stay_zero_after_a_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    mask = torch.rand(4, 8) < 0.5
    apply_masks(model, {"0": mask})
    model(torch.randn(5, 8)).square().sum().backward()
    mask_gradients(model)
    assert (model[0].weight_orig.grad[~mask] == 0).all()
    assert (model[0].weight_orig.grad[mask] != 0).any()
    with torch.no_grad():
        model[0].weight_orig.add_(1.0)  # what momentum or weight decay would do
    reapply_masks(model)
    assert (model[0].weight_orig[~mask] == 0).all() and (model[0].weight_orig[mask] != 0).all()


def test_normalisation_parameters_are_reported_apart_not_counted():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10), nn.LayerNorm(10)
    )
    report = measure_compression(model, model, (1, 8, 8))
    assert report["n_stored"] == report["n_dense"] == 4 * 9 + 144 * 10
    assert report["other_parameters"] == 4 + 2 * 4 + 10 + 2 * 10  # biases, BN and LN affine
