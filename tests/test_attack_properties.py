"""The evaluation's defining properties, pinned on planted models whose right answer is known.

`IdLookup` classifies an input by the nearest of the evaluation points (the first n test points of
digits lie at least 0.31 apart in L_inf, so every input inside a point's eps-ball, eps = 0.1, is
recognised as that point) and behaves by the point's id:
- a ROBUST id gets its label with a margin of 100 and zero gradient: no attack can break it;
- a FRAGILE id gets its label with margin 0.5 and a steep linear direction, so any attack (PGD,
  APGD, FMN, FGSM, DeepFool, C&W) breaks it with a perturbation far inside the ball;
- a WRONG id is misclassified at the clean point itself and classified correctly, with margin 100,
  everywhere else in the ball: robust accuracy must not count it (the AND with clean-correct).
So PGD, AutoAttack, the security curve and the native FGSM must score exactly the ROBUST ids,
and every input the model sees is recorded: the attacks must stay inside the ball and [0, 1].
The end-to-end test runs the same model through the real Runner and evaluation stage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import registered, tiny_digits
from safetensors.torch import save_file
from torch import nn

import rbench.evaluation as evaluation
from rbench.core.config import RunConfig
from rbench.core.pgd import PGD
from rbench.core.registry import METHODS, Method, register_method
from rbench.core.suites import get_suite
from rbench.data.datasets import load_data
from rbench.data.splits import Split
from rbench.evaluate import native
from rbench.evaluate.accuracy import (
    autoattack_correct,
    clean_correct,
    eps_monotonicity,
    pgd_correct,
    wilson_interval,
)
from rbench.evaluate.curves import above_autoattack, curve_entry, minimal_perturbations
from rbench.report.rows import record_row
from rbench.runner import Runner
from rbench.store.cache import content_hash
from rbench.store.points import record_points

FRAGILE, ROBUST, WRONG = 0, 1, 2
N_POINTS = 40
SUITE = get_suite("digits")
THREAT = SUITE.threat
EPS = THREAT.eps_value
TOL = 1e-5  # float slack of a projection


def kinds_of(ids: list[int]) -> dict[int, int]:
    """The planted behaviour of each id: every third robust, every fifth of the rest wrong."""
    return {
        i: ROBUST if p % 3 == 0 else WRONG if p % 5 == 1 else FRAGILE for p, i in enumerate(ids)
    }


class IdLookup(nn.Module):
    """See the module docstring. Records the largest L_inf distance of any input it saw from the
    evaluation point it recognised, and the smallest and largest input value."""

    def __init__(self, split: Split, kinds: dict[int, int], inner: nn.Module | None = None):
        super().__init__()
        self.register_buffer("anchors", split.images(slice(None)).flatten(1).clone())
        self.register_buffer("labels", split.y.clone())
        kind = [kinds.get(int(i), FRAGILE) for i in split.ids]
        self.register_buffer("kind", torch.tensor(kind, dtype=torch.long))
        self.inner = inner  # the dense model, so the harness counts ratio 1 (unused by forward)
        self.reset()

    def reset(self) -> None:
        self.max_distance, self.low, self.high = 0.0, math.inf, -math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        with torch.no_grad():
            distance, index = (flat[:, None, :] - self.anchors[None]).abs().amax(2).min(1)
            if len(x):
                self.max_distance = max(self.max_distance, float(distance.max()))
                self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))
        y, kind, anchor = self.labels[index], self.kind[index], self.anchors[index]
        toward = torch.where(anchor < 0.5, 1.0, -1.0)  # a direction that stays inside [0, 1]
        steep = 10.0 * ((flat - anchor) * toward).sum(1)
        flipped = (kind == WRONG) & (distance < 1e-6)
        big = torch.full_like(steep, 100.0)
        true = torch.where(
            kind == FRAGILE, torch.ones_like(steep), torch.where(flipped, 0 * big, big)
        )
        # the runner-up class leads the other eight, so minimum-norm attacks follow its gradient
        other = torch.where(kind == FRAGILE, 0.5 + steep, torch.where(flipped, big, 0 * big))
        classes = 10
        hot = nn.functional.one_hot(y, classes).to(x.dtype)
        return true[:, None] * hot + other[:, None] * nn.functional.one_hot(
            (y + 1) % classes, classes
        )


@pytest.fixture(scope="module")
def points(digits):
    return digits.test.head(N_POINTS)


@pytest.fixture
def lookup(points):
    return IdLookup(points, kinds_of(points.ids.tolist())).eval()


def expected(points: Split, kind: int) -> torch.Tensor:
    kinds = kinds_of(points.ids.tolist())
    return torch.tensor([kinds[int(i)] == kind for i in points.ids])


def assert_in_ball_and_bounds(model: IdLookup, radius: float) -> None:
    assert model.max_distance <= radius + TOL, f"an input {model.max_distance:.4f} from its point"
    assert model.low >= 0.0 and model.high <= 1.0, f"inputs in [{model.low}, {model.high}]"


def test_the_planted_model_is_what_the_tests_assume(lookup, points):
    clean = clean_correct(lookup, points, "cpu")
    assert torch.equal(clean, ~expected(points, WRONG))
    assert lookup.max_distance == 0.0  # each clean point is recognised as itself
    assert expected(points, ROBUST).sum() >= 10 and expected(points, WRONG).sum() >= 3


# ------------------------------------------------------------------ PGD itself


class Recorder(nn.Module):
    """Keeps every batch the model is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
@pytest.mark.parametrize("loss", ["ce", "margin", "kl"])
def test_pgd_stays_in_the_ball_and_the_bounds(trained_digits_model, points, norm, eps, loss):
    x, y = points.images(slice(None)), points.y
    spy = Recorder(trained_digits_model)
    attack = PGD(norm, eps, eps / 4, 10)
    x_adv = attack.perturb(spy, x, y, generator=torch.Generator().manual_seed(0), loss=loss)
    assert len(spy.inputs) >= 10
    for seen in [*spy.inputs, x_adv]:
        delta = (seen - x).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        assert size.max() <= eps + TOL
        assert seen.min() >= 0 and seen.max() <= 1
    size = (
        (x_adv - x).flatten(1).abs().amax(1)
        if norm == "Linf"
        else (x_adv - x).flatten(1).norm(dim=1)
    )
    assert size.max() > 0.9 * eps  # the attack used the ball


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_pgd_starts_uniformly_in_the_ball_and_trades_at_x_plus_small_gaussian(
    trained_digits_model, points, loss
):
    """Madry's PGD starts uniformly in the ball; TRADES' inner maximisation (Zhang et al. 2019,
    HYDRA's code) at x + 0.001 N(0, 1), both clamped to [0, 1]."""
    x, y = points.images(slice(None)), points.y
    spy = Recorder(trained_digits_model)
    PGD("Linf", EPS, EPS / 4, 3).perturb(
        spy, x, y, generator=torch.Generator().manual_seed(7), loss=loss
    )
    gen = torch.Generator().manual_seed(7)
    if loss == "kl":
        assert torch.equal(spy.inputs[0], x)  # the clean prediction TRADES moves away from
        start = (x + 0.001 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        first = spy.inputs[1]
    else:
        start = (x + (2 * torch.rand(x.shape, generator=gen) - 1) * EPS).clamp(0, 1)
        first = spy.inputs[0]
    assert torch.allclose(first, start, atol=1e-7)


def test_pgd_correct_scores_exactly_the_robust_ids_within_ball_and_bounds(lookup, points):
    correct = pgd_correct(lookup, points, THREAT, SUITE.protocol("quick").pgd, "cpu", seed=0)
    assert torch.equal(correct, expected(points, ROBUST))  # WRONG ones only by the AND
    assert_in_ball_and_bounds(lookup, EPS)
    margin = pgd_correct(lookup, points, THREAT, SUITE.protocol("quick").pgd, "cpu", loss="margin")
    assert torch.equal(margin, expected(points, ROBUST))


def test_wilson_interval_and_the_eps_sweep(trained_digits_model, points):
    assert wilson_interval(70, 100) == pytest.approx((0.604151, 0.781051), abs=1e-6)
    sweep = eps_monotonicity(trained_digits_model, points, THREAT, "cpu")
    assert list(sweep) == ["1x", "2x", "4x"]
    assert sweep["1x"] > sweep["4x"]  # PGD-10 at 4 x eps breaks more than at eps
    clean = float(clean_correct(trained_digits_model, points, "cpu").float().mean())
    assert sweep["1x"] < clean


def test_pgd_correct_attacks_in_batches_without_mixing_points(lookup, points):
    spec = SUITE.protocol("quick").pgd
    correct = pgd_correct(lookup, points, THREAT, spec, "cpu", seed=0, batch_size=7)
    assert torch.equal(correct, expected(points, ROBUST))


# ------------------------------------------------------------------ AutoAttack


def test_autoattack_scores_exactly_the_robust_ids_within_ball_and_bounds(lookup, points):
    correct, _ = autoattack_correct(lookup, points, THREAT, SUITE.protocol("quick"), "cpu", seed=0)
    assert torch.equal(correct, expected(points, ROBUST))
    assert_in_ball_and_bounds(lookup, EPS)
    assert lookup.max_distance > 0.9 * EPS  # it did attack


# ------------------------------------------------------------------ FMN curve and native attacks


def test_security_curve_counts_exactly_the_robust_ids(lookup, points):
    norms = minimal_perturbations(lookup, points, THREAT, "cpu", steps=20)
    robust, wrong = expected(points, ROBUST), expected(points, WRONG)
    assert torch.isinf(norms[robust]).all()
    assert (norms[wrong] == 0).all()
    fragile = norms[~robust & ~wrong]
    boundary = 0.5 / (10 * 64)  # the L_inf distance of the fragile points' decision boundary
    assert ((fragile >= boundary * (1 - TOL)) & (fragile <= 1.5 * boundary)).all()
    assert lookup.low >= 0.0 and lookup.high <= 1.0
    curve = curve_entry(norms, THREAT)
    at_eps = curve["eps"].index(round(EPS, 6))
    assert curve["accuracy"][at_eps] == pytest.approx(float(robust.float().mean()))
    assert curve["accuracy"][0] == pytest.approx(float((~wrong).float().mean()))
    assert curve["norms"] == [None if math.isinf(v) else round(v, 6) for v in norms.tolist()]


def test_native_fgsm_stays_in_its_ball_and_scores_exactly_the_robust_ids(lookup, points):
    x, y = points.images(slice(None)), points.y
    out = native.fgsm_accuracy(lookup, x, y, THREAT, "cpu")
    share = float(expected(points, ROBUST).float().mean())
    assert [row["accuracy"] for row in out["by_eps"]] == pytest.approx([share] * len(out["by_eps"]))
    fractions = native.SETTINGS["fgsm"]["eps_fractions"]
    assert [row["eps"] for row in out["by_eps"]] == pytest.approx([f * EPS for f in fractions])
    assert out["clean"] == pytest.approx(float((~expected(points, WRONG)).float().mean()))
    assert_in_ball_and_bounds(lookup, EPS)


@pytest.mark.parametrize("name", ["deepfool_l2", "cw_l2"])
def test_native_minimal_l2_finds_exactly_the_fragile_correct_points(
    lookup, points, name, monkeypatch
):
    monkeypatch.setitem(native.SETTINGS, "cw_l2", {**native.SETTINGS["cw_l2"], "steps": 40})
    x, y = points.images(slice(None)), points.y
    entry = native.minimal_l2_summary(lookup, x, y, name, "cpu")
    fragile = ~expected(points, ROBUST) & ~expected(points, WRONG)
    assert entry["n"] == int((~expected(points, WRONG)).sum())  # correct points only
    assert entry["n_found"] == int(fragile.sum())  # never a robust one
    boundary = 0.5 / 80  # the L2 distance of the fragile points' decision boundary
    assert (
        boundary * (1 - TOL)
        <= entry["mean_l2"]
        < (1.25 if name == "deepfool_l2" else 20) * boundary
    )
    assert lookup.low >= 0.0 and lookup.high <= 1.0
    correct = ~expected(points, WRONG)
    x_adv, found = native.minimal_l2(lookup, x[correct], y[correct], name, "cpu")
    r = (x_adv - x[correct]).flatten(1).norm(dim=1)[found]
    rho2 = (r / x[correct].flatten(1).norm(dim=1)[found]).mean()  # Guo et al.'s ||r|| / ||x||
    assert entry["rho2"] == pytest.approx(float(rho2), rel=1e-5)


# ------------------------------------------------------------------ through the real Runner

IDS_SUITE = "digits-planted-ids"


class PlantedIds(Method):
    """Test double: returns IdLookup over the suite's evaluation points (read by the test itself:
    a method is never lent the test split)."""

    name = "planted-ids"
    kind = "dense"
    citation = "none (a planted model of known robustness for tests/test_attack_properties.py)"
    native_metrics = ("fgsm",)

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        points = load_data("digits").test.head(ctx.suite.protocol("quick").n_eval)
        return IdLookup(points, kinds_of(points.ids.tolist()), inner=model)


def run_planted(tmp_path, dense_state) -> dict:
    """PlantedIds through the real Runner (quick protocol, N_POINTS points); the record."""
    ckpt = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in dense_state.items()}, ckpt)
    # 40 points in AutoAttack chunks of 16: the chunks must be stitched back in id order
    suite = tiny_digits(
        IDS_SUITE, dense_epochs=1, compress_epochs=1, n_eval=N_POINTS, batch_size=16
    )
    register_method(PlantedIds)
    try:
        with registered(suite):
            cfg = RunConfig(
                method=PlantedIds.name,
                ratio=1.0,
                suite=IDS_SUITE,
                device="cpu",
                dense_checkpoint=str(ckpt),
                results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"),
                quiet=True,
            )
            Runner(cfg).run()
    finally:
        METHODS.pop(PlantedIds.name)
    (path,) = (tmp_path / "results").rglob("*.json")
    return json.loads(path.read_text())


def test_the_runner_scores_exactly_the_robust_ids_of_the_recorded_points(
    tmp_path, _trained_digits_state, digits, monkeypatch
):
    """Through compress -> evaluate -> record: per-point bits, counts, ids and curve are those of
    the planted ids. AutoAttack is run for real, then told (as a faulty attack library might) that
    the misclassified points are robust: the stage must AND them away with clean-correct."""
    real = evaluation.ev.autoattack_correct

    def lenient(model, split, *args, **kwargs):
        correct, flags = real(model, split, *args, **kwargs)
        return correct | ~clean_correct(model, split, "cpu"), flags

    monkeypatch.setattr(evaluation.ev, "autoattack_correct", lenient)
    record = run_planted(tmp_path, _trained_digits_state)
    assert "security_curve_above_autoattack" not in record["flags"]
    m = record["metrics"]
    points = digits.test.head(N_POINTS)
    robust, wrong = expected(points, ROBUST), expected(points, WRONG)
    bits = record_points(record)
    assert (bits["clean"] == (~wrong).numpy()).all()
    assert (bits["pgd"] == robust.numpy()).all()
    assert (bits["autoattack"] == robust.numpy()).all()
    assert m["eval_ids"]["ids_sha256"] == content_hash(points.ids.tolist(), 64)
    assert m["eval_ids"]["first"] == N_POINTS
    k = int(robust.sum())
    assert m["pgd"]["correct"] == m["pgd_margin"]["correct"] == m["autoattack"]["correct"] == k
    assert m["autoattack"]["n"] == m["pgd"]["n"] == N_POINTS
    assert m["clean"]["n"] == len(digits.test)  # clean accuracy: the whole test split
    assert m["clean_eval_points"]["correct"] == int((~wrong).sum())
    norms = m["security_curve"]["norms"]
    assert [v is None for v in norms] == robust.tolist()
    assert all(v == 0 for v, w in zip(norms, wrong.tolist(), strict=True) if w)
    fgsm = m["native"]["fgsm"]["by_eps"]
    assert [row["accuracy"] for row in fgsm] == pytest.approx([k / N_POINTS] * len(fgsm))


def test_a_curve_above_autoattack_is_flagged_on_known_bits():
    """The cross-check's rule: FMN leaving significantly more points robust than AutoAttack fires,
    a difference within noise (or FMN below AutoAttack) does not."""
    n, eps = 100, 0.1
    autoattack = torch.arange(n) < 40
    norms = torch.where(torch.arange(n) < 60, math.inf, 0.01)  # 20 points AutoAttack breaks
    assert "20 points robust that AutoAttack breaks" in above_autoattack(norms, autoattack, eps)
    close = torch.where(torch.arange(n) < 42, math.inf, 0.01)  # 2 more: noise
    assert above_autoattack(close, autoattack, eps) is None
    below = torch.where(torch.arange(n) < 30, math.inf, 0.01)
    assert above_autoattack(below, autoattack, eps) is None


def test_a_minimum_norm_attack_weaker_than_autoattack_flags_the_record(
    tmp_path, _trained_digits_state, digits, monkeypatch
):
    """A planted fault: the minimum-norm attack finds nothing on the fragile points (as FMN does
    behind masked gradients) while AutoAttack breaks them. The record keeps the curve, flags it
    as an upper bound, and the leaderboard row shows the flag."""
    real = evaluation.minimal_perturbations

    def blind(model, split, *args, **kwargs):
        norms = real(model, split, *args, **kwargs)
        return torch.where(norms > 0, math.inf, norms)  # every correct point "robust"

    monkeypatch.setattr(evaluation, "minimal_perturbations", blind)
    record = run_planted(tmp_path, _trained_digits_state)
    points = digits.test.head(N_POINTS)
    correct = ~expected(points, WRONG)
    fragile = correct & ~expected(points, ROBUST)
    message = record["flags"]["security_curve_above_autoattack"]
    assert f"{int(fragile.sum())} points robust that AutoAttack breaks" in message
    assert record["metrics"]["security_curve"]["norms"].count(None) == int(correct.sum())
    assert "security_curve_above_autoattack" in record_row(record)["flags"].split(",")
