"""Structured pruning with physically smaller layers (rbench.layers.structured): dropping all-zero
filters keeps the network's function, lowers the MACs the harness counts, keeps the stored
count and the spectra, and a saved model rebuilds from its structure."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DIGITS_SHAPE, assert_reloads_exactly, new_digits_model
from torch import nn

from rbench.core.budget import compressible_layers, count_macs, measure_compression
from rbench.data.models import build_model
from rbench.evaluate.spectral import diagnose
from rbench.layers import apply_masks
from rbench.layers.structured import KeptFilters, drop_pruned_filters


def filter_pruned(model: nn.Module, keep: float, seed: int = 0) -> nn.Module:
    """Masks that zero whole filters (rows) of every layer but the classifier; random biases,
    so that a dropped filter still has an output (its bias) that must be kept."""
    gen = torch.Generator().manual_seed(seed)
    layers = compressible_layers(model)
    masks = {}
    for path, m in list(layers.items())[:-1]:
        rows = m.weight.shape[0]
        alive = torch.randperm(rows, generator=gen)[: max(1, int(keep * rows))]
        mask = torch.zeros_like(m.weight)
        mask[alive] = 1
        masks[path] = mask
        if m.bias is not None:
            with torch.no_grad():
                m.bias.copy_(torch.randn(rows, generator=gen))
    return apply_masks(model, masks)


@pytest.mark.parametrize("arch,shape", [("smallcnn", DIGITS_SHAPE), ("lenet300", (1, 28, 28))])
def test_dropping_pruned_filters_keeps_the_function_and_lowers_the_macs(arch, shape):
    torch.manual_seed(0)
    dense = build_model(arch, shape, 10, (0.5,), (0.5,))
    masked = filter_pruned(copy.deepcopy(dense), keep=0.25).eval()
    x = torch.rand(16, *shape)
    want, macs_masked = masked(x), count_macs(masked, shape)
    before = measure_compression(dense, masked, shape)

    shrunk = copy.deepcopy(masked)
    dropped = drop_pruned_filters(shrunk)
    shrunk.eval()

    assert set(dropped) == set(list(compressible_layers(dense))[:-1])
    assert all(isinstance(shrunk.get_submodule(p), KeptFilters) for p in dropped)
    torch.testing.assert_close(shrunk(x), want, rtol=1e-5, atol=1e-5)
    after = measure_compression(dense, shrunk, shape)
    assert after["n_stored"] == before["n_stored"]  # the same weights, now in smaller tensors
    assert after["macs"] < macs_masked == before["macs"] == after["macs_dense"]
    assert after["macs_ratio"] > 1.2


def test_spectra_and_reload_of_a_model_with_dropped_filters(tmp_path):
    masked = filter_pruned(new_digits_model(), keep=0.5).eval()
    shrunk = filter_pruned(new_digits_model(), keep=0.5)  # the same masks and biases
    drop_pruned_filters(shrunk)
    shrunk.eval()
    a, b = diagnose(masked, DIGITS_SHAPE), diagnose(shrunk, DIGITS_SHAPE)
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert ra["layer"] == rb["layer"] and ra["shape"] == rb["shape"]
        assert rb["sigma_max"] == pytest.approx(ra["sigma_max"], rel=1e-4)
        assert rb["stable_rank"] == pytest.approx(ra["stable_rank"], rel=1e-4)
    assert b["summary"]["lipschitz_bound_log10"] == pytest.approx(
        a["summary"]["lipschitz_bound_log10"], rel=1e-4
    )
    structure = assert_reloads_exactly(shrunk, new_digits_model(), tmp_path)
    assert {s["type"] for s in structure.values()} == {"KeptFilters"}


def test_layers_without_zero_filters_are_left_alone():
    model = new_digits_model()
    assert drop_pruned_filters(model) == {}
    assert not any(isinstance(m, KeptFilters) for m in model.modules())
