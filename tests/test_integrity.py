"""Integrity: planted gradient-masking models are flagged unreliable by the harness's own run (and
the honest model is not); a method that claims more compression than its tensors hold is refused;
a model whose MACs cannot be counted and a method over its compute allowance are stopped with one
clear line. Hostile files: tests/test_hostile_files.py; determinism: tests/test_determinism.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
import torch
from conftest import registered, tiny_digits
from safetensors.torch import save_file
from torch import nn

from rbench.core.budget import ComputeMeter
from rbench.core.config import RunConfig
from rbench.core.errors import RbenchError
from rbench.core.registry import METHODS, Method, MethodConfig, register_method
from rbench.core.suites import get_suite
from rbench.evaluate.accuracy import UNRELIABLE, autoattack_correct, merge_autoattack_flags
from rbench.runner import Runner

SUITE = "digits-integrity"

# ------------------------------------------------------------------ planted models and methods


class Wrapped(nn.Module):
    """The honest model behind a planted change of its input or output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class SoftmaxOutput(Wrapped):
    """Returns probabilities instead of logits (saturated softmax: vanishing gradients)."""

    def forward(self, x):
        return torch.softmax(self.model(x), dim=1)


class NoisyInput(Wrapped):
    """A randomised forward: fresh Gaussian noise on the input at every call, even in eval mode."""

    def forward(self, x):
        return self.model(x + 0.05 * torch.randn_like(x))


class StuckDropout(nn.Dropout):
    """Dropout that ignores eval(): it stays in training mode."""

    def train(self, mode: bool = True):
        return super().train(True)


class DropoutInEval(Wrapped):
    """Dropout left active at evaluation time (on the input of the honest model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.drop = StuckDropout(0.2)

    def forward(self, x):
        return self.model(self.drop(x))


class RoundedInput(Wrapped):
    """A non-differentiable step: the input quantised to digits' 17 grey levels (torch.round has
    zero gradient almost everywhere), leaving clean inputs unchanged."""

    def forward(self, x):
        return self.model(torch.round(x * 16) / 16)


class SignInput(Wrapped):
    """A non-differentiable step: the input binarised by torch.sign (zero gradient)."""

    def forward(self, x):
        return self.model((torch.sign(x - 0.5) + 1) / 2)


class GradientInForward(Wrapped):
    """A dynamic defence: the forward pass itself differentiates the model (test-time steps)."""

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.model(z).logsumexp(1).sum(), z)
        return self.model(x + 0.01 * g.sign())


PLANTED = {
    "softmax": (SoftmaxOutput, "aa_softmax_output"),
    "input-noise": (NoisyInput, "aa_randomized_defense"),
    "eval-dropout": (DropoutInEval, "aa_randomized_defense"),
    "round": (RoundedInput, "aa_zero_gradients"),
    "sign": (SignInput, "aa_zero_gradients"),
}


@dataclass
class PlantedConfig(MethodConfig):
    wrapper: str = "none"


class PlantedMasking(Method):
    """Test double: returns the dense model unchanged ('none') or inside a planted wrapper."""

    name = "planted-masking"
    kind = "dense"
    citation = "none (a planted gradient-masking model for tests/test_integrity.py)"
    Config = PlantedConfig

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        if self.config.wrapper == "none":
            return model
        if self.config.wrapper == "grad-in-forward":
            return GradientInForward(model)
        return PLANTED[self.config.wrapper][0](model)


@dataclass
class ClaimConfig(MethodConfig):
    cheat: str = "report"


class ClaimsRatio(Method):
    """Test double: claims the requested ratio but leaves every weight dense. 'report' only says
    so in ctx.report; 'fake-mask' also attaches sparse `weight_mask`/`weight_orig` tensors that
    the forward pass never uses (it still multiplies by the dense `weight`)."""

    name = "planted-claims-ratio"
    kind = "unstructured"
    citation = "none (a planted dishonest method for tests/test_integrity.py)"
    Config = ClaimConfig

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        ctx.report["claimed_ratio"] = budget.ratio
        if self.config.cheat == "fake-mask":
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    keep = max(1, int(module.weight.numel() / budget.ratio) - 1)
                    mask = torch.zeros_like(module.weight)
                    mask.view(-1)[:keep] = 1
                    module.register_buffer("weight_mask", mask)
                    module.weight_orig = nn.Parameter(module.weight.detach() * mask)
        return model


@dataclass
class GreedyConfig(MethodConfig):
    overspend: float = 1.5  # trains for this multiple of the budget


class Greedy(Method):
    """Test double: keeps the model dense and adversarially trains it for `overspend` times its
    compute allowance."""

    name = "planted-greedy"
    kind = "dense"
    citation = "none (a planted over-budget method for tests/test_integrity.py)"
    Config = GreedyConfig

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        # small batches, so that a few percent of an epoch is a whole number of steps
        ctx.fit(model, epochs=budget.epochs * self.config.overspend, lr=1e-3, batch_size=8)
        return model


PLANTED_METHODS = (PlantedMasking, ClaimsRatio, Greedy)


@pytest.fixture(scope="module")
def planted_env(tmp_path_factory, _trained_digits_state):
    """A digits suite with 40 quick-protocol points in one AutoAttack chunk, the planted methods
    registered, and the briefly trained digits model as the dense checkpoint."""
    ckpt = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in _trained_digits_state.items()}, ckpt)
    suite = tiny_digits(SUITE, dense_epochs=1, compress_epochs=1, n_eval=40, batch_size=40)
    for cls in PLANTED_METHODS:
        register_method(cls)
    try:
        with registered(suite):
            yield ckpt
    finally:
        for cls in PLANTED_METHODS:
            METHODS.pop(cls.name)


def planted_config(tmp_path, ckpt, method, ratio=1.0, **opts) -> RunConfig:
    return RunConfig(
        method=method,
        ratio=ratio,
        suite=SUITE,
        device="cpu",
        opts=tuple(opts.items()),
        dense_checkpoint=str(ckpt),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        quiet=True,
    )


def written_record(tmp_path) -> dict:
    (path,) = (tmp_path / "results").rglob("*.json")
    return json.loads(path.read_text())


# ------------------------------------------------------------------ 1. evaluation integrity


def test_honest_model_is_not_flagged(tmp_path, planted_env):
    Runner(planted_config(tmp_path, planted_env, "planted-masking", wrapper="none")).run()
    record = written_record(tmp_path)
    assert record["unreliable"] is False, record["flags"]
    # the attacks really work on it: robust accuracy is below clean accuracy on the same points
    m = record["metrics"]
    assert m["autoattack"]["correct"] < m["clean_eval_points"]["correct"]


@pytest.mark.parametrize("wrapper", list(PLANTED))
def test_planted_gradient_masking_is_flagged_unreliable(tmp_path, planted_env, wrapper):
    """Each planted model runs through the runner's real path (compress -> verify -> evaluate ->
    record) and the written record carries the unreliable flag and names the reason."""
    flag = PLANTED[wrapper][1]
    Runner(planted_config(tmp_path, planted_env, "planted-masking", wrapper=wrapper)).run()
    record = written_record(tmp_path)
    assert record["unreliable"] is True
    assert flag in record["flags"], record["flags"]
    assert record["flags"][flag]  # a message that says why


def test_a_dynamic_model_does_not_taint_later_evaluations(trained_digits_model, digits):
    """pyautoattack counts the calls its dynamic-defence check sees in a module-level dict that it
    never resets; the evaluator resets it, so an honest model evaluated after a dynamic one in the
    same process is not flagged."""
    protocol = replace(get_suite("digits").protocol("quick"), attacks=("apgd-ce",))
    points, threat = digits.test.head(10), get_suite("digits").threat
    _, flags = autoattack_correct(
        GradientInForward(trained_digits_model), points, threat, protocol, "cpu"
    )
    assert "aa_dynamic_model" in flags
    _, flags = autoattack_correct(trained_digits_model, points, threat, protocol, "cpu")
    assert "aa_dynamic_model" not in flags, flags


class DetachedOn(Wrapped):
    """Zero input gradient inside the eps-balls of the given points (their graph is cut; digits'
    test points lie at least 0.31 apart in L_inf, eps is 0.1), the honest model's gradient
    elsewhere: a planted model with a known number of zero-gradient points."""

    def __init__(self, model: nn.Module, anchors: torch.Tensor) -> None:
        super().__init__(model)
        self.register_buffer("anchors", anchors.flatten(1))

    def forward(self, x):
        with torch.no_grad():
            near = (x.flatten(1)[:, None] - self.anchors[None]).abs().amax(2).min(1).values
        cut = (near < 0.15)[:, None]
        return torch.where(cut, self.model(x.detach()), self.model(x))


@pytest.mark.parametrize("k,flag", [(1, "aa_zero_gradients_few"), (3, "aa_zero_gradients")])
def test_a_few_zero_gradient_points_are_shown_and_many_make_the_record_unreliable(
    trained_digits_model, digits, k, flag
):
    """pyautoattack's message names the count; over AutoAttack's chunks the counts add up, and
    below 1% of the points (a bias under one point of accuracy) the flag is kept as
    `aa_zero_gradients_few`, outside UNRELIABLE."""
    protocol = get_suite("digits").protocol("quick")  # APGD-CE, then APGD-T (which checks)
    points, threat = digits.test.head(200), get_suite("digits").threat
    correct = torch.nonzero(trained_digits_model(points.images(slice(None))).argmax(1) == points.y)
    cut = correct[:, 0][torch.tensor([0, -1, -2])[:k]]  # both chunks when k = 3
    model = DetachedOn(trained_digits_model, points.images(cut)).eval()
    _, flags_a = autoattack_correct(model, points.part(0, 100), threat, protocol, "cpu")
    _, flags_b = autoattack_correct(model, points.part(100, 200), threat, protocol, "cpu")
    merged = merge_autoattack_flags([flags_a, flags_b], 200)
    assert set(merged) == {flag}, merged
    assert f"{k} of 200 points with zero gradient" in merged[flag]
    assert (flag in UNRELIABLE) == (k / 200 >= 0.01)
    # a message without a count is kept as pyautoattack said it (strict), other flags pass through
    kept = merge_autoattack_flags([{"aa_zero_gradients": "zero gradient!", "aa_x": "y"}], 200)
    assert kept == {"aa_zero_gradients": "zero gradient!", "aa_x": "y"}


# ------------------------------------------------------------------ 2. the harness's own count


def test_method_claiming_a_ratio_with_dense_weights_is_refused(tmp_path, planted_env):
    cfg = planted_config(tmp_path, planted_env, "planted-claims-ratio", ratio=16, cheat="report")
    with pytest.raises(RbenchError, match=r"stores \d+ weights, measured ratio 1\.000 < requested"):
        Runner(cfg).run()
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*"))


def test_fake_mask_attributes_do_not_fool_the_count(tmp_path, planted_env):
    cfg = planted_config(tmp_path, planted_env, "planted-claims-ratio", ratio=16, cheat="fake-mask")
    with pytest.raises(RbenchError, match=r"measured ratio .* < requested 16"):
        Runner(cfg).run()


def test_dishonest_method_through_the_cli_is_one_clear_line(tmp_path, planted_env, cli):
    results = tmp_path / "results"
    code, _, err = cli(
        "run",
        *("-m", "planted-claims-ratio", "-r", "16", "-s", SUITE, "-q"),
        *("--dense-checkpoint", str(planted_env), "--device", "cpu"),
        *("--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")),
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: method 'planted-claims-ratio' returned a model that stores")
    assert "< requested 16" in line
    assert not results.exists() or not list(results.rglob("*.json"))


def test_model_that_differentiates_inside_forward_is_one_clear_line(tmp_path, planted_env, cli):
    """torch's FLOP counter cannot trace autograd.grad inside a forward pass: the harness says so
    in one sentence instead of a traceback, and writes no record."""
    results = tmp_path / "results"
    code, _, err = cli(
        "run",
        *(
            "-m",
            "planted-masking",
            "-r",
            "1",
            "-s",
            SUITE,
            "-q",
            "--opt",
            "wrapper=grad-in-forward",
        ),
        *("--dense-checkpoint", str(planted_env), "--device", "cpu"),
        *("--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")),
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: cannot count the MACs of this model"), line
    assert not results.exists() or not list(results.rglob("*.json"))


# ------------------------------------------------------------------ 3. the compute allowance


def test_five_percent_over_the_allowance_is_tolerated_and_more_is_stopped():
    meter = ComputeMeter(n_train=100, attack_steps=4, limit_epochs=2.0)
    meter.charge(100, 5 * 2)  # exactly the allowance
    meter.charge(10, 5)  # +5% (50 of 1000 passes): the tolerance
    assert meter.used_epochs == pytest.approx(2.1)
    with pytest.raises(RbenchError, match=r"compute budget exceeded: 2\.12 AT-epochs used of 2"):
        meter.charge(2, 5)  # one more pass for two samples: over the tolerance


@pytest.mark.parametrize("overspend,stopped", [(1.04, False), (1.5, True)])
def test_method_training_past_its_budget_is_stopped(tmp_path, planted_env, overspend, stopped):
    """Through the runner's real path: 4% over the allowance runs to a record that shows the
    compute used; 50% over is stopped inside ctx.fit and leaves no record."""
    cfg = planted_config(tmp_path, planted_env, "planted-greedy", overspend=overspend)
    if stopped:
        with pytest.raises(RbenchError, match="compute budget exceeded"):
            Runner(cfg).run()
        assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*"))
    else:
        Runner(cfg).run()
        record = written_record(tmp_path)
        used, allowed = record["compute"]["used_epochs"], record["budget"]["epochs"]
        assert allowed < used <= allowed * 1.05
