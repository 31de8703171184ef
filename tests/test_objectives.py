"""What every method trains on, pinned: the training losses themselves (mixed = 0.5 clean + 0.5
adversarial; TRADES = CE(clean) + beta KL(f(x) || f(x')) in that direction), what the trainer
charges and attacks with for each loss, and, for every registered method and variant, the loss,
attack, regulariser and passes per sample of each training phase it runs (tiny budgets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rbench.train.context as context
from rbench.core.budget import ComputeMeter
from rbench.core.pgd import PGD
from rbench.core.suites import get_suite
from rbench.data.splits import BatchLoader
from rbench.methods import get_method, load_methods
from rbench.train.trainer import LOSS_PASSES, _loss, train_epoch

SUITE = get_suite("digits")
K = SUITE.dense.attack.steps  # the suite's PGD-k training attack
# forward-backward passes per sample (README "Compute"): PGD-k costs k, the step 1 or 2
PASSES = {"ce": 1, "adv": K + 1, "mixed": K + 2, "trades": K + 2}


# ------------------------------------------------------------------ the losses


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    x, x_adv = torch.randn(8, 6), torch.randn(8, 6)
    return model, x, x_adv, torch.randint(0, 5, (8,))


def test_natural_adversarial_and_mixed_losses(batch):
    model, x, x_adv, y = batch
    clean, adv = model(x), model(x_adv)
    value, logits = _loss(model, x, y, None, "ce", 6.0, 0.0)
    assert torch.allclose(value, F.cross_entropy(clean, y)) and torch.equal(logits, clean)
    value, logits = _loss(model, x, y, x_adv, "adv", 6.0, 0.1)
    assert torch.allclose(value, F.cross_entropy(adv, y, label_smoothing=0.1))
    assert torch.equal(logits, adv)
    value, _ = _loss(model, x, y, x_adv, "mixed", 6.0, 0.1)
    mixed = 0.5 * F.cross_entropy(clean, y, label_smoothing=0.1)
    mixed = mixed + 0.5 * F.cross_entropy(adv, y, label_smoothing=0.1)
    assert torch.allclose(value, mixed)
    for wrong in (F.cross_entropy(adv, y, label_smoothing=0.1), mixed * 2):
        assert not torch.allclose(value, wrong)


def test_trades_is_clean_ce_plus_beta_kl_from_the_clean_to_the_adversarial_prediction(batch):
    model, x, x_adv, y = batch
    value, logits = _loss(model, x, y, x_adv, "trades", 6.0, 0.0)
    clean, adv = model(x), model(x_adv)
    p, q = F.softmax(clean, 1), F.softmax(adv, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()  # KL(f(x) || f(x')), batch mean
    reverse = (q * (q.log() - p.log())).sum(1).mean()
    expected = F.cross_entropy(clean, y) + 6.0 * kl
    assert torch.allclose(value, expected, atol=1e-6) and torch.equal(logits, adv)
    assert not torch.allclose(value, F.cross_entropy(clean, y) + 6.0 * reverse, atol=1e-3)
    # both predictions carry gradient (Zhang et al.'s code detaches neither)
    grad = torch.autograd.grad(value, model[0].weight)[0]
    assert torch.allclose(grad, torch.autograd.grad(expected, model[0].weight)[0], atol=1e-6)
    value2, _ = _loss(model, x, y, x_adv, "trades", 1.0, 0.0)
    assert torch.allclose(value2, F.cross_entropy(clean, y) + kl, atol=1e-6)


class SpyAttack:
    """The suite's PGD, recording the loss it is asked to maximise and the model's mode."""

    def __init__(self, attack: PGD) -> None:
        self.attack, self.steps, self.calls = attack, attack.steps, []

    def perturb(self, model, x, y, **kwargs):
        self.calls.append((kwargs.get("loss", "ce"), model.training))
        return self.attack.perturb(model, x, y, **kwargs)


@pytest.mark.parametrize("loss", ["ce", "adv", "mixed", "trades"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_train_epoch_attacks_and_charges_by_loss(digits, loss, mode):
    from conftest import new_digits_model

    model = new_digits_model()
    attack = SpyAttack(SUITE.dense.attack.pgd(SUITE.threat))
    meter = ComputeMeter(len(digits.train), K)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = BatchLoader(digits.train, 16)
    train_epoch(
        model, loader, optimizer, attack=attack, meter=meter, loss=loss, max_batches=2,
        attack_mode=mode,
    )  # fmt: skip
    assert meter.passes == 2 * 16 * PASSES[loss]
    assert LOSS_PASSES[loss] == PASSES[loss] - (0 if loss == "ce" else K)
    if loss == "ce":
        assert attack.calls == []
    else:
        assert attack.calls == [("kl" if loss == "trades" else "ce", mode == "train")] * 2
    assert model.training  # the update itself runs in train mode


def test_context_fit_hands_the_trainer_the_suite_attack_or_none(make_ctx, monkeypatch):
    seen = []
    monkeypatch.setattr(context, "fit", lambda model, loader, **kw: seen.append(kw))
    ctx = make_ctx(epochs=1.0)
    model = nn.Linear(2, 2)
    for loss in ("adv", "mixed", "trades", "ce"):
        ctx.fit(model, epochs=0.1, lr=0.1, loss=loss)
    custom = PGD("Linf", 0.05, 0.01, 3)
    ctx.fit(model, epochs=0.1, lr=0.1, loss="adv", attack=custom)
    assert [kw["loss"] for kw in seen] == ["adv", "mixed", "trades", "ce", "adv"]
    assert [kw["attack"] for kw in seen] == [ctx.train_attack] * 3 + [None, custom]
    assert ctx.train_attack == PGD("Linf", 0.1, 0.025, K)


def test_affordable_epochs_price_each_loss(make_ctx):
    ctx = make_ctx(epochs=2.0)
    for loss, passes in PASSES.items():
        assert ctx.affordable_epochs(1.0, loss) == pytest.approx(2.0 * (K + 1) / passes)
    assert ctx.affordable_epochs(0.25, "adv") == pytest.approx(0.5)


# ------------------------------------------------------------------ every method's objective

# per (method, variant): each training phase's (loss, regularised, settings it must pass);
# "*" marks a pattern every call follows (lth-adv trains once per round)
ADV, CE, TRADES, MIXED = "adv", "ce", "trades", "mixed"
OBJECTIVES = {
    ("cstar", "harness"): [(ADV, True, {}), (ADV, False, {})],
    ("cstar", "paper"): [(ADV, True, {}), (ADV, False, {})],
    ("dense", "harness"): [],
    ("dense-ft", "harness"): [(ADV, False, {})],
    ("hydra", "harness"): [(ADV, False, {}), (ADV, False, {})],
    ("hydra", "paper"): [(TRADES, False, {"trades_beta": 6.0})] * 2,
    ("lth-adv", "harness"): ["*", (MIXED, False, {"label_smoothing": 0.0})],
    ("lth-adv", "paper"): ["*", (MIXED, False, {"label_smoothing": 0.1, "optimizer": "adam"})],
    ("magnitude", "harness"): [(ADV, False, {})],
    ("magnitude", "paper"): [(TRADES, False, {})],
    ("orth-lowrank", "harness"): [(ADV, False, {})],
    ("orth-lowrank", "paper"): [(CE, False, {})],
    ("radmm", "harness"): [
        (ADV, True, {"attack_mode": "eval"}),
        (ADV, False, {"attack_mode": "eval"}),
    ],
    ("radmm", "paper"): [
        (ADV, True, {"attack_mode": "train"}),
        (ADV, False, {"attack_mode": "train"}),
    ],
    ("random", "harness"): [(ADV, False, {})],
    ("sparse-robust", "harness"): [(ADV, False, {}), (ADV, False, {})],
    ("sparse-robust", "paper"): [(CE, False, {}), (CE, False, {})],
    ("tscnc", "harness"): [(ADV, True, {}), (ADV, True, {})],
    ("tscnc", "paper"): [(ADV, True, {}), (ADV, True, {})],
}
DEFAULTS = {"trades_beta": 6.0, "label_smoothing": 0.0, "attack_mode": "eval"}  # train_epoch's
RATIO = {"lth-adv": 1.5, "dense": 1.0, "dense-ft": 1.0}


def test_every_shipped_method_and_variant_has_a_pinned_objective():
    shipped = {
        (name, variant)
        for name, cls in load_methods().items()
        if cls.__module__.startswith("rbench.methods.")
        for variant in cls.variants
    }
    assert shipped == set(OBJECTIVES)


class Counting:
    """A loader that counts the samples trained on (a batch counts once the loop comes back for
    the next one: the trainer draws one batch past its last step and drops it)."""

    def __init__(self, loader) -> None:
        self.loader, self.samples = loader, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            yield x, y
            self.samples += len(y)


@pytest.mark.parametrize(("name", "variant"), sorted(OBJECTIVES))
def test_each_phase_trains_on_its_papers_objective(
    name, variant, trained_digits_model, make_ctx, monkeypatch
):
    real, calls = context.fit, []

    def spy(model, loader, **kw):
        loader, before = Counting(loader), kw["meter"].passes
        out = real(model, loader, **kw)
        calls.append({**kw, "samples": loader.samples, "passes": kw["meter"].passes - before})
        return out

    monkeypatch.setattr(context, "fit", spy)
    method = get_method(name)
    ctx = make_ctx(ratio=RATIO.get(name, 4.0), epochs=0.5)
    cfg = method.Config(variant=variant)
    method(cfg).compress(trained_digits_model, ctx.budget, ctx)

    phases = OBJECTIVES[(name, variant)]
    if phases and phases[0] == "*":
        assert len(calls) >= 2
        phases = [phases[1]] * len(calls)
    assert len(calls) == len(phases)
    for call, (loss, regularised, settings) in zip(calls, phases, strict=True):
        assert call["loss"] == loss, call.get("bar")
        assert call["attack"] == (None if loss == CE else ctx.train_attack)
        assert (call["hooks"] is not None and call["hooks"].regularizer is not None) == regularised
        for key, value in settings.items():
            assert call.get(key, DEFAULTS.get(key)) == value, key
        assert call["samples"] > 0
        assert call["passes"] == call["samples"] * PASSES[loss]  # what the meter charged
    assert ctx.meter.used_epochs <= ctx.budget.epochs * 1.05
