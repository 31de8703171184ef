"""TSCNC: the conditioning term is a scale-invariant, nonnegative measure of spread that lowers
condition numbers; neither term moves pruned weights; against `magnitude` at the same ratio,
budget and seed the pruned layers end better conditioned; the ratio is exact within budget."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import new_digits_model

from rbench.core.budget import compressible_layers, measure_compression, verify_ratio
from rbench.layers import apply_masks, finalize, magnitude_masks, masks_of
from rbench.methods.magnitude import Magnitude
from rbench.methods.tscnc import (
    CONDITIONING_TERMS,
    SPARSITY_TERMS,
    TSCNC,
    TSCNCConfig,
    condition_number,
    geometric_mean_kappa,
    log_frobenius_conditioning,
)


def test_conditioning_term_measures_the_spread_of_singular_values():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    orthogonal = q[:5]  # 5 x 12, all singular values 1
    assert log_frobenius_conditioning(orthogonal).item() == pytest.approx(0.0, abs=1e-5)
    w = torch.randn(5, 12)
    cnc = log_frobenius_conditioning(w).item()
    assert cnc > 0
    assert log_frobenius_conditioning(7.0 * w).item() == pytest.approx(cnc, rel=1e-5)
    assert log_frobenius_conditioning(w.T).item() == pytest.approx(cnc, rel=1e-5)
    # all-zero rows and columns (a heavily pruned layer) are left out, the value stays finite
    padded = torch.zeros(8, 4, 3, 3)
    padded[:5, :, :, 0] = w.view(5, 4, 3)
    assert log_frobenius_conditioning(padded).item() == pytest.approx(cnc, rel=1e-5)


def test_descending_the_conditioning_term_lowers_the_condition_number():
    torch.manual_seed(0)
    w = torch.randn(10, 30) * torch.logspace(0, -2, 10)[:, None]  # kappa ~ 100
    kappa0 = condition_number(w)
    w.requires_grad_(True)
    optimizer = torch.optim.SGD([w], lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        log_frobenius_conditioning(w).backward()
        optimizer.step()
    assert condition_number(w) < kappa0 / 5


@pytest.mark.parametrize("tsc", sorted(SPARSITY_TERMS))
@pytest.mark.parametrize("cnc", sorted(CONDITIONING_TERMS))
def test_neither_term_moves_pruned_weights(trained_digits_model, tsc, cnc):
    model = trained_digits_model
    apply_masks(model, magnitude_masks(model, 8, scope="layer"))
    method = TSCNC(TSCNCConfig(tsc=tsc, cnc=cnc))
    nu = {p: 1e-4 for p in compressible_layers(model)}
    for conditioning in (False, True):
        model.zero_grad()
        method.penalty(nu, conditioning=conditioning)(model).backward()
        for path, module in compressible_layers(model).items():
            grad, mask = module.weight_orig.grad, module.weight_mask.bool()
            assert (grad[~mask] == 0).all(), f"{path}: a pruned weight gets a gradient"
            assert (grad[mask] != 0).any(), f"{path}: the term does not act on survivors"


def test_finetuning_keeps_pruned_weights_at_zero(trained_digits_model, make_ctx):
    model, ctx = trained_digits_model, make_ctx(ratio=8, epochs=1.0)
    masks = magnitude_masks(model, 8, scope="layer")
    apply_masks(model, masks)
    method = TSCNC()
    nu = {p: 1e-4 for p in compressible_layers(model)}
    method.finetune(model, nu, ctx)
    for path, module in compressible_layers(model).items():
        assert torch.equal(masks_of(model)[path].bool(), masks[path])
        assert (module.weight_orig[~masks[path]] == 0).all()


@pytest.mark.slow
def test_condition_numbers_lower_than_magnitude_at_same_ratio_and_budget(
    trained_digits_model, make_ctx, _trained_digits_state
):
    ratio, epochs, seed = 8, 2.0, 0
    baseline_model = new_digits_model()
    baseline_model.load_state_dict(_trained_digits_state)
    results = {}
    for name, method, model in [
        ("magnitude", Magnitude(), baseline_model),
        ("tscnc", TSCNC(), trained_digits_model),
    ]:
        torch.manual_seed(seed)
        ctx = make_ctx(ratio=ratio, epochs=epochs, seed=seed)
        out = finalize(method.compress(model, ctx.budget, ctx))
        results[name] = (geometric_mean_kappa(out), ctx.meter.used_epochs)
        if name == "tscnc":  # fine-tuning under CNC lowered kappa from where pruning left it
            assert ctx.report["kappa_geomean"] < ctx.report["kappa_geomean_before_finetune"]
    (kappa_mag, used_mag), (kappa_tscnc, used_tscnc) = results["magnitude"], results["tscnc"]
    assert abs(used_mag - used_tscnc) < 0.05 * epochs, "not the same compute"
    assert kappa_tscnc < 0.95 * kappa_mag, results


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["harness", "paper"])
def test_tscnc_reaches_the_ratio_exactly_within_budget(trained_digits_model, make_ctx, variant):
    dense = new_digits_model()
    ctx = make_ctx(ratio=16, epochs=1.0)
    method = TSCNC(TSCNCConfig(variant=variant))
    model = finalize(method.compress(trained_digits_model, ctx.budget, ctx))
    report = measure_compression(dense, model, (1, 8, 8))
    verify_ratio(report, 16, "tscnc")
    assert report["n_stored"] == math.floor(report["n_dense"] / 16)
    assert 0.9 <= ctx.meter.used_epochs <= 1.05
    assert ctx.report["prune"] == ("scores" if variant == "paper" else "magnitude")
    assert math.isfinite(ctx.report["kappa_geomean"])
