"""Spectral diagnostics: matrix spectra, the FFT spectrum of convolution operators (against the
explicit matrix and power iteration), factorised layers, and the Lipschitz bound against measured
local ratios."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import new_digits_model
from torch import nn

from rbench.core.budget import measure_compression
from rbench.core.suites import get_suite
from rbench.data.models import BasicBlock
from rbench.evaluate.spectral import (
    conv_operator_spectrum,
    diagnose,
    local_lipschitz,
    matrix_spectrum,
    power_iteration,
)
from rbench.layers import apply_masks, magnitude_masks, set_module
from rbench.layers.factorised import LowRankLinear, Tucker2Conv, usv_layer


def test_orthogonal_matrix_has_condition_number_one_and_full_stable_rank():
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)))
    spec = matrix_spectrum(q)
    assert spec["condition_number"] == pytest.approx(1.0, abs=1e-9)
    assert spec["stable_rank"] == pytest.approx(12.0, rel=1e-9)
    assert spec["numerical_rank"] == 12


def test_diagonal_matrix_gives_its_singular_values():
    w = torch.zeros(4, 6)
    w[range(4), range(4)] = torch.tensor([0.5, -5.0, 2.0, 3.0])
    spec = matrix_spectrum(w)
    assert spec["singular_values"] == pytest.approx([5.0, 3.0, 2.0, 0.5])
    assert spec["sigma_max"] == 5.0 and spec["sigma_min"] == 0.5
    assert spec["condition_number"] == pytest.approx(10.0)
    assert spec["stable_rank"] == pytest.approx((25 + 9 + 4 + 0.25) / 25)


def test_rank_deficient_matrix_has_infinite_condition_but_a_finite_one_over_its_rank():
    w = torch.diag(torch.tensor([4.0, 2.0, 0.0]))
    spec = matrix_spectrum(w)
    assert spec["condition_number"] is None  # infinite, stored as null
    assert spec["numerical_rank"] == 2
    assert spec["condition_number_rank"] == pytest.approx(2.0)
    json.dumps(spec, allow_nan=False)


def explicit_matrix(conv: nn.Conv2d, shape: tuple[int, int, int]) -> torch.Tensor:
    """The convolution as a dense matrix: its images of the standard basis."""
    n = shape[0] * shape[1] * shape[2]
    with torch.no_grad():
        return conv(torch.eye(n, dtype=torch.float64).view(n, *shape)).view(n, -1).T


CONVS = {
    "circular": dict(cin=2, cout=3, k=3, stride=1, padding=1, mode="circular", hw=(6, 5)),
    "circular-stride2": dict(cin=2, cout=3, k=3, stride=2, padding=1, mode="circular", hw=(6, 8)),
    "circular-kernel-wider-than-grid": dict(
        cin=2, cout=2, k=5, stride=1, padding=2, mode="circular", hw=(4, 4)
    ),
    "zeros": dict(cin=2, cout=3, k=3, stride=1, padding=1, mode="zeros", hw=(6, 5)),
    "zeros-stride2": dict(cin=3, cout=4, k=3, stride=2, padding=1, mode="zeros", hw=(7, 6)),
    "zeros-dilated-grouped": dict(
        cin=4, cout=4, k=3, stride=1, padding=2, mode="zeros", hw=(6, 6), dilation=2, groups=2
    ),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_fft_conv_spectrum_matches_the_explicit_matrix_and_power_iteration(name):
    c = CONVS[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(
        c["cin"],
        c["cout"],
        c["k"],
        c["stride"],
        c["padding"],
        c.get("dilation", 1),
        c.get("groups", 1),
        bias=False,
        padding_mode=c["mode"],
    ).double()
    shape = (c["cin"], *c["hw"])
    explicit = torch.linalg.svdvals(explicit_matrix(conv, shape))
    values, info = conv_operator_spectrum(conv, c["hw"])
    fft = values.sort(descending=True).values
    power = power_iteration(conv, shape, iterations=500)
    assert power == pytest.approx(float(explicit[0]), rel=1e-4)
    if c["mode"] == "circular":  # exact: every singular value, in number and value
        assert info["exact"]
        assert fft.numel() == explicit.numel()
        torch.testing.assert_close(fft, explicit, rtol=1e-9, atol=1e-9)
    else:  # zero padding: the circular spectrum on the padded grid bounds each value from above
        assert not info["exact"] and info["upper_bound"]
        assert fft.numel() >= explicit.numel()
        assert bool((explicit <= fft[: explicit.numel()] + 1e-9).all())


def test_layer_table_names_and_counts_layers_as_the_ratio_table_does():
    dense = new_digits_model().eval()
    pruned = new_digits_model().eval()
    apply_masks(pruned, magnitude_masks(pruned, 4.0))  # masks not baked in: the effective weight
    shape = get_suite("digits").data.input_shape
    table = measure_compression(dense, pruned, shape)["per_layer"]
    layers = diagnose(pruned, shape)["layers"]
    assert [r["layer"] for r in layers] == [r["layer"] for r in table]
    assert [r["stored"] for r in layers] == [r["stored"] for r in table]
    assert [r["density"] for r in layers] == pytest.approx([r["density"] for r in table], rel=1e-5)


def test_factorised_layers_report_the_composed_weight_and_the_core():
    torch.manual_seed(0)
    model = new_digits_model().eval()
    convs = model.net[0]
    set_module(model, "net.0.2", Tucker2Conv.from_conv(convs[2], (5, 4)))  # stride 2
    set_module(model, "net.1", LowRankLinear.from_linear(model.net[1], 7))
    linear = model.net[3]
    u, s, v = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
    core = torch.diag(s[:6]) @ torch.randn(6, 6) * 0.1 + torch.diag(s[:6])
    set_module(model, "net.3", usv_layer(linear, u[:, :6], core, v[:6].T))
    shape = get_suite("digits").data.input_shape
    diag = diagnose(model, shape)
    assert diag["summary"]["rank_deficient_layers"] == 3  # every factorised layer is low-rank
    rows = {r["layer"]: r for r in diag["layers"]}
    assert list(rows) == ["net.0.0", "net.0.2", "net.0.4", "net.1", "net.3"]
    tucker, lowrank, usv = rows["net.0.2"], rows["net.1"], rows["net.3"]
    assert "note" not in tucker and tucker["shape"] == [32, 16, 3, 3]
    assert tucker["stored"] == 32 * 5 + 16 * 4 + 5 * 4 * 9
    assert tucker["numerical_rank"] <= 5  # the composed weight has rank <= r1
    assert tucker["operator"]["power_iteration"] <= tucker["operator"]["sigma_max"] * (1 + 1e-5)
    assert lowrank["shape"] == [100, 32 * 2 * 2] and lowrank["numerical_rank"] == 7
    assert lowrank["stored"] == 7 * (100 + 128)
    assert usv["numerical_rank"] == 6 and usv["stored"] == 6 * (10 + 100) + 36
    expected = torch.linalg.svdvals(core.double())
    assert usv["core"]["singular_values"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert usv["core"]["condition_number"] == pytest.approx(
        float(expected[0] / expected[-1]), rel=1e-5
    )


class DirectUSV(nn.Module):
    """A U S V^T layer holding its factors as parameters (no chain of children to compose)."""

    def __init__(self, n: int, m: int, r: int) -> None:
        super().__init__()
        self.U, self.S, self.V = (nn.Parameter(torch.randn(*s)) for s in [(n, r), (r, r), (m, r)])
        self.bias = nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.V @ self.S.T @ self.U.T + self.bias


def test_a_layer_with_direct_factors_is_probed_and_its_core_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), DirectUSV(5, 8, 3), nn.ReLU(), nn.Linear(5, 2))
    (row, _) = diagnose(model, (2, 2, 2))["layers"]
    layer = model[1]
    w = (layer.U @ layer.S @ layer.V.T).detach().double()
    assert row["layer"] == "1" and row["stored"] == 3 * (5 + 8) + 9
    assert row["singular_values"][:3] == pytest.approx(
        torch.linalg.svdvals(w)[:3].tolist(), rel=1e-5
    )
    assert row["numerical_rank"] == 3
    assert row["core"]["shape"] == [3, 3]


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        BasicBlock(8, 16, 2),
        BasicBlock(16, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    with torch.no_grad():  # BatchNorm statistics away from the identity, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.2, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("which", ["trained digits smallcnn", "tiny resnet"])
def test_lipschitz_bound_is_above_every_measured_local_ratio(which, trained_digits_model, digits):
    if which == "tiny resnet":
        model, shape = tiny_resnet(), (3, 8, 8)
        x = torch.rand(40, *shape, generator=torch.Generator().manual_seed(1))
    else:
        model, shape = trained_digits_model, get_suite("digits").data.input_shape
        x = digits.test.images(slice(0, 40))
    diag = diagnose(model, shape, x)
    summary = diag["summary"]
    assert summary["lipschitz_bound_rigorous"]
    bound = 10 ** summary["lipschitz_bound_log10"]
    ratios = [local_lipschitz(model, x, radius=r, steps=20) for r in (1e-3, 1e-1, 1.0)]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # random directions and far-apart pairs too
        d = torch.randn(x.shape, generator=gen)
        ratios.append((model(x + d) - model(x)).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1))
        y = x.flip(0)
        ratios.append((model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1))
    worst = max(float(r.max()) for r in ratios)
    assert summary["local_lipschitz"]["max"] <= bound
    assert 0 < worst <= bound * (1 + 1e-4)
    assert summary["local_lipschitz"]["points"] == 40
    json.dumps(diag, allow_nan=False)


def test_gradient_ascent_finds_the_norm_of_a_linear_map():
    torch.manual_seed(0)
    model = nn.Linear(6, 4, bias=True).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    ratios = local_lipschitz(model, x, steps=50)
    top = torch.linalg.svdvals(model.weight.detach())[0]
    torch.testing.assert_close(ratios, top.expand(3), rtol=1e-6, atol=0)


def test_unknown_modules_make_the_bound_not_rigorous():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):  # not a chain: the rules cannot see the sum
            return self.a(x) + self.a(self.a(x))

    diag = diagnose(nn.Sequential(Twice(), nn.GELU(), nn.Linear(3, 2)), (3,))
    assert not diag["summary"]["lipschitz_bound_rigorous"]
    assert len(diag["layers"]) == 2


def test_bound_is_tight_where_it_should_be():
    """One circular strided conv: bound = its norm, met by gradient ascent. A residual block with
    a zero branch is the identity on x >= 0: bound 1 (main + shortcut, not their product)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular").double()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    model = nn.Sequential(conv, nn.Flatten())
    bound = 10 ** diagnose(model, (3, 8, 8))["summary"]["lipschitz_bound_log10"]
    assert float(local_lipschitz(model, x, steps=300).max()) == pytest.approx(bound, rel=1e-4)
    block = BasicBlock(3, 3, 1).double().eval()
    with torch.no_grad():
        block.conv2.weight.zero_()
    summary = diagnose(block, (3, 8, 8), x)["summary"]
    assert summary["lipschitz_bound_log10"] == pytest.approx(0.0, abs=1e-6)
    assert summary["local_lipschitz"]["max"] == pytest.approx(1.0, rel=1e-6)


def test_cli_diagnoses_a_checkpoint_and_a_record(tmp_path, cli, dense_checkpoint):
    from test_leaderboard import make_record  # a schema-valid synthetic record

    checkpoint = str(dense_checkpoint)
    code, out, _ = cli(
        "diagnose", "--checkpoint", checkpoint, "--suite", "digits", "--points", "20"
    )
    assert code == 0
    assert all(f"| {p} " in out for p in ["net.0.0", "net.0.2", "net.0.4", "net.1", "net.3"])
    assert "local Lipschitz on 20 test points" in out
    code, out, _ = cli(
        "diagnose", "--checkpoint", checkpoint, "--json", "--suite", "digits", "--points", "0"
    )
    assert code == 0
    diag = json.loads(out)
    record = make_record()
    record["diagnostics"] = diag
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    code, out, _ = cli("diagnose", "--record", str(path))
    assert code == 0 and "| net.0.2 " in out and "log10 Lipschitz bound" in out
    record["diagnostics"] = {}
    path.write_text(json.dumps(record))
    code, _, err = cli("diagnose", "--record", str(path))
    assert code == 2 and "no spectral diagnostics" in err
    record["diagnostics"] = {"layers": [{"stored": "x"}]}  # schema-valid, yet malformed
    path.write_text(json.dumps(record))
    code, _, err = cli("diagnose", "--record", str(path))
    assert code == 2 and "malformed" in err


def test_runner_diagnoses_on_the_first_100_evaluation_points(tmp_path, digits, monkeypatch):
    import rbench.evaluate.spectral
    from rbench.core.config import RunConfig
    from rbench.evaluation import diagnose
    from rbench.runner import Runner

    seen = {}

    def spy(model, input_shape, x=None):
        seen["x"], seen["shape"] = x, input_shape
        return {}

    monkeypatch.setattr(rbench.evaluate.spectral, "diagnose", spy)
    cfg = RunConfig(
        method="dense",
        ratio=1,
        suite="digits",
        protocol="quick",
        results_dir=str(tmp_path / "r"),
        cache_dir=str(tmp_path / "c"),
    )
    runner = Runner(cfg)
    diagnose(runner, new_digits_model().eval(), digits)
    n_eval = runner.protocol.n_eval
    torch.testing.assert_close(seen["x"], digits.test.images(slice(0, min(100, n_eval))))
    assert seen["shape"] == (1, 8, 8)
