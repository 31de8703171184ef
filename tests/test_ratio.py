"""The one ratio function counts what a compressed model really stores, however it is built."""

import math

import pytest
import torch
from torch import nn

from rbench.core.budget import count_macs, max_stored, measure_compression, verify_ratio
from rbench.core.errors import RbenchError
from rbench.layers import apply_masks, finalize, keep_counts, magnitude_masks


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )


def test_dense_model_has_ratio_one():
    model = toy()
    report = measure_compression(model, model, (1, 6, 6))
    assert report["n_dense"] == 8 * 9 + 288 * 10
    assert report["n_stored"] == report["n_dense"]
    assert report["ratio"] == 1 and report["macs_ratio"] == 1


@pytest.mark.parametrize("ratio", [2, 4, 7.5, 16])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masked_model_counts_survivors(ratio, scope):
    dense, model = toy(), toy()
    apply_masks(model, magnitude_masks(model, ratio, scope=scope))
    report = measure_compression(dense, model, (1, 6, 6))
    assert report["n_stored"] <= math.floor(report["n_dense"] / ratio)
    assert report["ratio"] >= ratio
    # the count is on the tensors: the prune hook's weight_orig still holds the pruned values
    masked = sum(
        int(m.weight_orig.count_nonzero()) for m in model.modules() if hasattr(m, "weight_orig")
    )
    assert masked == report["n_dense"]
    finalize(model)
    assert measure_compression(dense, model, (1, 6, 6))["n_stored"] == report["n_stored"]


class TwoFactor(nn.Module):
    """A rank-r linear made of two nn.Linear children (the harness counts r*(n+m))."""

    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        self.first = nn.Linear(n_in, rank, bias=False)
        self.second = nn.Linear(rank, n_out)

    def forward(self, x):
        return self.second(self.first(x))


class RawFactors(nn.Module):
    """A custom module holding its factors directly as parameters."""

    def __init__(self, n_in: int, n_out: int, rank: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(n_out, rank))
        self.s = nn.Parameter(torch.randn(rank, rank))
        self.v = nn.Parameter(torch.randn(n_in, rank))

    def forward(self, x):
        return x @ self.v @ self.s.T @ self.u.T


@pytest.mark.parametrize("factor", [TwoFactor, RawFactors])
def test_factorised_layer_counts_its_factors(factor):
    dense, model = toy(), toy()
    model[3] = factor(288, 10, 3)
    report = measure_compression(dense, model, (1, 6, 6))
    extra = 3 * 3 if factor is RawFactors else 0
    assert report["n_stored"] == 8 * 9 + 3 * (288 + 10) + extra
    row = next(r for r in report["per_layer"] if r["layer"] == "3")
    assert row["dense"] == 2880 and row["stored"] == 3 * 298 + extra


def test_structurally_smaller_model_counts_real_tensor_sizes():
    dense = toy()
    small = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 10)
    )
    report = measure_compression(dense, small, (1, 6, 6))
    assert report["n_stored"] == 2 * 9 + 72 * 10
    assert report["ratio"] == pytest.approx(report["n_dense"] / (18 + 720))
    assert report["macs_ratio"] > 3  # a really smaller model really computes less
    assert count_macs(small, (1, 6, 6)) < count_macs(dense, (1, 6, 6))


def test_masks_do_not_reduce_macs():
    dense, model = toy(), toy()
    apply_masks(model, magnitude_masks(model, 8))
    assert measure_compression(dense, model, (1, 6, 6))["macs_ratio"] == 1


def test_too_little_compression_is_refused():
    dense, model = toy(), toy()
    apply_masks(model, magnitude_masks(model, 4))
    report = measure_compression(dense, model, (1, 6, 6))
    verify_ratio(report, 4, "m")  # exactly at the ratio: accepted
    with pytest.raises(RbenchError, match="measured ratio .* < requested 8"):
        verify_ratio(report, 8, "m")


def test_rounding_slack_is_one_element_per_layer():
    n_dense = 2952
    assert max_stored(n_dense, 4, n_layers=2) == 738 + 2
    dense, model = toy(), toy()
    counts = {"0": 18 + 1, "3": 720 + 2}  # 741 stored: 3 over floor(N/4), slack is 2
    apply_masks(
        model,
        {
            p: torch.arange(dict(model.named_modules())[p].weight.numel()).view_as(
                dict(model.named_modules())[p].weight
            )
            < c
            for p, c in counts.items()
        },
    )
    with pytest.raises(RbenchError):
        verify_ratio(measure_compression(dense, model, (1, 6, 6)), 4, "m")


def test_keep_counts_pays_dense_layers_first_and_never_overshoots():
    sizes = {"a": 100, "b": 1000, "c": 10}
    counts = keep_counts(sizes, 10, dense=["c"])
    assert counts["c"] == 10
    assert sum(counts.values()) <= math.floor(1110 / 10)
    with pytest.raises(RbenchError, match="cannot be reached"):
        keep_counts(sizes, 1000, dense=["c"])
