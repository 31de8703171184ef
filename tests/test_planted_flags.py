"""Integrity flags a reader can trust, shown on planted models run through the whole harness
(compress -> verify -> evaluate -> record, quick protocol on 40 digits points):

- logits scaled by 1e4 saturate the cross-entropy, so PGD with it is stuck while PGD with the
  margin loss and AutoAttack are not: `pgd_masked_by_loss` and `pgd_far_above_autoattack`;
- a sign-quantised input has no gradient, so robust accuracy does not fall as eps grows:
  `accuracy_flat_in_eps` (unreliable);
- a fine-tune whose loss becomes NaN is stopped with its last finite weights: the record says
  `diverged`, and `rbench run` exits 0 with one `warning:` line;
- a model that predicts one class: `collapsed`, the same one warning line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import registered, tiny_digits
from safetensors.torch import save_file
from torch import nn

from rbench.core.config import RunConfig
from rbench.core.registry import METHODS, Method, MethodConfig, register_method
from rbench.evaluate.accuracy import UNRELIABLE, masking_flags
from rbench.runner import Runner

SUITE = "digits-planted"


@dataclass
class PlantedConfig(MethodConfig):
    variant: str = "harness"


class _Planted(Method):
    kind = "dense"
    Config = PlantedConfig
    citation = "none (a planted model for tests/test_planted_flags.py)"


class ScaledLogits(_Planted):
    """Test double: the dense model with its last layer (weights and bias) scaled by 1e4."""

    name = "planted-scaled-logits"

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(1e4)
            last.bias.mul_(1e4)
        return model


class SignQuantised(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((torch.sign(x - 0.5) + 1) / 2)


class SignInput(_Planted):
    """Test double: the dense model behind an input binarised by torch.sign."""

    name = "planted-sign-input"

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        return SignQuantised(model)


class Diverges(_Planted):
    """Test double: fine-tunes at a rate of 1e30, so the loss becomes non-finite."""

    name = "planted-diverges"

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        ctx.fit(model, epochs=budget.epochs, lr=1e30, tag="fine-tune")
        return model


class Collapses(_Planted):
    """Test double: the last layer is zeroed but for a bias on class 0: one class for all."""

    name = "planted-collapses"

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[0] = 1.0
        return model


PLANTED = (ScaledLogits, SignInput, Diverges, Collapses)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, _trained_digits_state):
    ckpt = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in _trained_digits_state.items()}, ckpt)
    suite = tiny_digits(SUITE, dense_epochs=1, compress_epochs=0.5, n_eval=40, batch_size=40)
    for cls in PLANTED:
        register_method(cls)
    try:
        with registered(suite):
            yield ckpt
    finally:
        for cls in PLANTED:
            METHODS.pop(cls.name)


def run_record(tmp_path, ckpt, method: str) -> dict:
    cfg = RunConfig(
        method=method,
        ratio=1.0,
        suite=SUITE,
        device="cpu",
        dense_checkpoint=str(ckpt),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        quiet=True,
    )
    Runner(cfg).run()
    (path,) = (tmp_path / "results").rglob("*.json")
    return json.loads(path.read_text())


def test_scaled_logits_mask_pgd_and_the_flags_say_so(tmp_path, planted):
    record = run_record(tmp_path, planted, "planted-scaled-logits")
    flags, m = record["flags"], record["metrics"]
    assert "pgd_masked_by_loss" in flags and "pgd_far_above_autoattack" in flags, flags
    # the PGD column misleads (cross-entropy saturated), the margin loss and AutoAttack do not
    assert m["pgd"]["accuracy"] - m["pgd_margin"]["accuracy"] >= 0.05
    assert m["pgd"]["accuracy"] - m["autoattack"]["accuracy"] >= 0.05
    # unreliable exactly when a flag of UNRELIABLE is set (the PGD flags alone are not in it:
    # AutoAttack, the ranking number, is not fooled by the loss)
    assert record["unreliable"] == bool(set(flags) & UNRELIABLE)
    assert not {"pgd_masked_by_loss", "pgd_far_above_autoattack"} & UNRELIABLE


def test_sign_quantised_input_is_flat_in_eps_and_unreliable(tmp_path, planted):
    record = run_record(tmp_path, planted, "planted-sign-input")
    sweep = record["metrics"]["eps_sweep_pgd10"]
    assert "accuracy_flat_in_eps" in record["flags"], (record["flags"], sweep)
    assert record["unreliable"] is True


def test_masking_flags_alone_on_known_bits():
    """The rules on hand-made per-point results: a gap of 5 points that is significant fires,
    noise does not, and flat-in-eps needs 80% of the accuracy kept at 4 x eps."""
    n = 100
    robust = torch.arange(n) < 60
    margin = torch.arange(n) < 40
    assert set(masking_flags(robust, margin, margin, {"1x": 0.6, "4x": 0.0})) == {
        "pgd_masked_by_loss",
        "pgd_far_above_autoattack",
    }
    close = torch.arange(n) < 58
    assert masking_flags(robust, close, close, {"1x": 0.6, "2x": 0.3, "4x": 0.05}) == {}
    assert "accuracy_flat_in_eps" in masking_flags(robust, robust, robust, {"1x": 0.6, "4x": 0.5})
    assert masking_flags(robust, robust, robust, {"1x": 0.6, "4x": 0.4}) == {}


@pytest.mark.parametrize(
    "method,flag", [("planted-diverges", "diverged"), ("planted-collapses", "collapsed")]
)
def test_diverged_or_collapsed_run_is_a_result_with_one_warning(
    tmp_path, planted, cli, method, flag
):
    code, out, err = cli(
        "run", "-m", method, "-r", "1", "-s", SUITE, "--device", "cpu", "-q",
        "--dense-checkpoint", str(planted),
        "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: this run {flag}"), err
    (path,) = (tmp_path / "results").rglob("*.json")
    record = json.loads(path.read_text())
    assert flag in record["flags"] and record["flags"][flag]
    assert f"{flag}:" in out  # the printed flags line names it too
    if flag == "diverged":
        assert "non-finite" in record["flags"]["diverged"] or "nan" in record["flags"]["diverged"]
        # the last finite weights were kept: the model still classifies
        assert record["metrics"]["clean"]["accuracy"] > 0.3
    else:
        assert record["metrics"]["clean"]["accuracy"] < 1.5 / 10
