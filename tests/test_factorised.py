"""Factorised layers, their projections, rank selection and save -> load (rbench.layers.factorised,
rbench.layers.ranks)."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_reloads_exactly
from torch import nn

from rbench.core.budget import compressible_layers, measure_compression, stored_tensors
from rbench.data.models import build_model
from rbench.layers.factorised import (
    LowRankLinear,
    Tucker2Conv,
    factorise,
    recalibrate_batchnorm,
    truncated_svd,
    tucker2_project,
    usv_layer,
)
from rbench.layers.ranks import (
    RankUnit,
    fraction_ranks,
    global_ranks,
    matrix_cost,
    plan_global,
    rank_unit,
    threshold_ranks,
    tucker2_cost,
    uniform_rank,
)
from rbench.perf.latency import measure_latency


def low_multilinear_rank(out_ch, in_ch, k, r1, r2, seed=0):
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(r1, r2, k, k, generator=g)
    u1, u2 = torch.randn(out_ch, r1, generator=g), torch.randn(in_ch, r2, generator=g)
    return torch.einsum("abkl,oa,ib->oikl", core, u1, u2)


@pytest.mark.parametrize("sweeps", [0, 2])
def test_tucker2_recovers_a_tensor_of_known_multilinear_rank(sweeps):
    w = low_multilinear_rank(24, 12, 3, 5, 3)
    err = (tucker2_project(w, (5, 3), sweeps) - w).norm() / w.norm()
    assert err < 1e-5
    # one rank short in either mode loses energy: the projection really truncates
    assert (tucker2_project(w, (4, 3), sweeps) - w).norm() / w.norm() > 1e-3
    assert (tucker2_project(w, (5, 2), sweeps) - w).norm() / w.norm() > 1e-3


def test_tucker2_conv_runs_the_projected_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, bias=True)
    layer = Tucker2Conv.from_conv(conv, (6, 4))
    x = torch.randn(3, 8, 11, 11)
    w = tucker2_project(conv.weight, (6, 4))
    expected = F.conv2d(x, w, conv.bias, stride=2, padding=2, dilation=2)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(layer.dense_weight(), w, atol=1e-5)
    assert layer.core.stride == (2, 2) and layer.first.stride == (1, 1)


def test_truncated_svd_is_the_best_rank_r_approximation():
    a = torch.randn(30, 70, generator=torch.Generator().manual_seed(1))
    for matrix in (a, a.T):
        u, s, v = truncated_svd(matrix, 7)
        eye = torch.eye(7)
        assert torch.allclose(u.T @ u, eye, atol=1e-5) and torch.allclose(v.T @ v, eye, atol=1e-5)
        assert (s[:-1] >= s[1:]).all()
        full = torch.linalg.svdvals(matrix)
        assert torch.allclose(s, full[:7], rtol=1e-4)
        err = (matrix - (u * s) @ v.T).norm()
        assert err == pytest.approx(float(full[7:].square().sum().sqrt()), rel=1e-4)


def _stored(module: nn.Module) -> int:
    return sum(n for _, n, _ in stored_tensors(module))


def test_layers_store_exactly_the_formula():
    conv, linear = nn.Conv2d(12, 20, 3, padding=1), nn.Linear(40, 30)
    assert _stored(Tucker2Conv.from_conv(conv, (7, 5))) == tucker2_cost(20, 12, 9, 7, 5)
    assert _stored(LowRankLinear.from_linear(linear, 6)) == matrix_cost(30, 40, 6)
    full_core = torch.randn(6, 6)  # the count is of nonzeros: a diagonal S would store 6
    u, _, v = truncated_svd(linear.weight, 6)
    assert _stored(usv_layer(linear, u, full_core, v)) == matrix_cost(30, 40, 6, core=True)
    u, _, v = truncated_svd(conv.weight.reshape(20, -1), 6)
    usv = usv_layer(conv, u, full_core, v)
    assert _stored(usv) == matrix_cost(20, 12 * 9, 6, core=True)
    x = torch.randn(2, 12, 7, 7)
    assert torch.allclose(usv(x), F.conv2d(x, usv.dense_weight(), conv.bias, padding=1), atol=1e-5)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 8, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8 * 2 * 2, 20)
        self.head = nn.Linear(20, 5)

    def forward(self, x):
        x = self.conv2(self.pw(torch.relu(self.bn(self.conv(x)))))
        return self.head(torch.relu(self.fc(x.flatten(1))))


def test_save_load_through_safetensors_and_structure_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = factorise(Mixed(), {"conv": (5, 2), "pw": (4,), "conv2": (3, 3), "fc": (6,)})
    u, s, v = truncated_svd(model.head.weight, 4)
    model.head = usv_layer(model.head, u, torch.diag(s), v)
    model.eval()
    structure = assert_reloads_exactly(model, Mixed(), tmp_path, input_shape=(3, 8, 8))
    assert {spec["type"] for spec in structure.values()} == {
        "Tucker2Conv",
        "LowRankLinear",
        "USVLinear",
    }


def test_uniform_rank_is_the_closed_form_of_methods_0_1():
    for n, m, ratio in [(512, 4608, 16), (100, 1568, 4), (10, 100, 2), (64, 27, 64)]:
        for core in (True, False):
            r = uniform_rank(n, m, ratio, core)
            assert matrix_cost(n, m, r, core) <= n * m / ratio
            assert r == min(n, m) or matrix_cost(n, m, r + 1, core) > n * m / ratio


def test_global_ranks_follow_the_energy():
    flat = torch.full((50,), 1 / 50)
    rank2 = torch.tensor([0.5, 0.5] + [0.0] * 48)
    units = [
        RankUnit("a", "matrix", (50, 60), (rank2,)),
        RankUnit("b", "matrix", (50, 60), (flat,)),
    ]
    ranks = global_ranks(units, budget=20 * 110)
    assert ranks["a"] == (2,)  # nothing to gain beyond its true rank while b still gains
    assert sum(matrix_cost(50, 60, r[0]) for r in ranks.values()) <= 20 * 110


def test_threshold_rule_does_not_starve_the_expensive_layer():
    # the mnist5k smallcnn's situation: a wide linear with a slowly decaying spectrum beside a
    # cheap conv with a faster decaying one; the greedy from rank 1 buys cheap conv steps and
    # leaves the linear at rank 1
    slow, fast = (
        torch.tensor([0.97**i for i in range(100)]),
        torch.tensor([0.8**i for i in range(32)]),
    )
    units = [
        RankUnit("linear", "matrix", (100, 1568), (slow / slow.sum(),)),
        RankUnit("conv", "tucker2", (32, 32, 9), (fast / fast.sum(),) * 2),
    ]
    budget = 5000

    def worst(ranks):
        return min(
            float(e[:r].sum()) for u in units for e, r in zip(u.energy, ranks[u.path], strict=True)
        )

    greedy, threshold = global_ranks(units, budget), threshold_ranks(units, budget)
    assert greedy["linear"] == (1,)
    assert threshold["linear"][0] > 1 and worst(threshold) > worst(greedy)
    for ranks in (greedy, threshold):
        assert sum(u.cost(ranks[u.path]) for u in units) <= budget


@pytest.fixture(scope="module", params=["vgg16", "resnet18"])
def cifar_model(request):
    torch.manual_seed(0)
    model = build_model(request.param, (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    layers = list(compressible_layers(model))
    dense = [layers[0], layers[-1]]
    units = [rank_unit(p, m) for p, m in compressible_layers(model).items() if p not in dense]
    return model, dense, units


@pytest.mark.parametrize("ratio", [2, 4, 8, 16, 32, 64])
def test_global_rank_selection_lands_on_the_ratio(cifar_model, ratio):
    model, dense, units = cifar_model
    ranks = plan_global(model, ratio, dense=dense, units=units)
    compressed = factorise(copy.deepcopy(model), ranks, project=False)
    measured = measure_compression(model, compressed, (3, 32, 32))
    assert ratio <= measured["ratio"] <= ratio * 1.01
    assert measured["macs_ratio"] > 1
    kept = {r["layer"]: r["density"] for r in measured["per_layer"]}
    assert all(kept[p] == 1.0 for p in dense)  # first conv and last linear dense, counted


def test_fraction_ranks_share_one_fraction_and_fill_the_budget():
    dims = {"a": (100, 1568), "b": (32, 144), "c": (32, 288)}
    budget = 9000
    ranks, f = fraction_ranks(dims, budget)
    spent = sum(matrix_cost(*dims[p], r, core=True) for p, r in ranks.items())
    assert spent <= budget
    assert all(r >= math.ceil(f * min(dims[p]) - 1e-9) for p, r in ranks.items())
    cheapest = min(
        matrix_cost(*d, ranks[p] + 1, True) - matrix_cost(*d, ranks[p], True)
        for p, d in dims.items()
    )
    assert budget - spent < cheapest


def test_recalibrate_batchnorm_takes_the_statistics_of_the_inputs():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4))
    batches = [torch.randn(8, 2, 5, 5) * 3 + 1 for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 1
    features = torch.cat([model[0](b) for b in batches]).detach()
    mean = features.mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert not model.training


def test_measure_latency_is_quick_and_reports_milliseconds():
    start = time.perf_counter()
    result = measure_latency(Mixed(), (3, 8, 8), "cpu", batch_size=4, budget_s=0.2)
    assert time.perf_counter() - start < 2.0
    assert result["ms"] > 0 and 3 <= result["repeats"] <= 50 and result["batch_size"] == 4
