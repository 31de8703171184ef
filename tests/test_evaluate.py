"""The evaluator: AutoAttack through rbench equals pyautoattack called directly; its checks
become flags; intervals and the out-of-memory retry behave."""

import pytest
import torch
from pyautoattack import AutoAttack
from torch import nn

from rbench.core.suites import Protocol, ThreatModel, get_suite
from rbench.evaluate.accuracy import (
    autoattack_correct,
    clean_correct,
    pgd_correct,
    sanity_flags,
    wilson_interval,
    with_oom_retry,
)

QUICK = Protocol(
    "quick",
    40,
    get_suite("digits").protocol("quick").pgd,
    "custom",
    ("apgd-ce", "apgd-t"),
    apgd_restarts=1,
)
THREAT = ThreatModel("Linf", "0.1")


def test_autoattack_wrapper_matches_pyautoattack(trained_digits_model, digits):
    points = digits.test.head(40)
    ours, flags = autoattack_correct(trained_digits_model, points, THREAT, QUICK, "cpu", seed=0)
    adversary = AutoAttack(
        trained_digits_model,
        attacks=["apgd-ce", "apgd-t"],
        device="cpu",
        eps=0.1,
        norm="Linf",
        seed=0,
        version="custom",
    )
    adversary.apgd.n_restarts = 1
    _, y_adv = adversary.run_standard_evaluation(
        points.images(slice(None)), points.y, batch_size=500
    )
    assert torch.equal(ours, (y_adv == points.y).cpu())
    clean = clean_correct(trained_digits_model, points, "cpu")
    assert ours.sum() < clean.sum()  # the attack really lowers accuracy
    assert not (ours & ~clean).any()  # never robust where not even clean-correct
    assert flags == {}


class SoftmaxOutput(nn.Module):
    """A planted gradient-masking model: it returns probabilities instead of logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x) * 50, dim=1)


def test_autoattack_checks_become_flags(trained_digits_model, digits):
    points = digits.test.head(20)
    _, flags = autoattack_correct(SoftmaxOutput(trained_digits_model), points, THREAT, QUICK, "cpu")
    assert "aa_softmax_output" in flags


def test_pgd_lowers_accuracy_and_more_restarts_never_raise_it(trained_digits_model, digits):
    points = digits.test.head(60)
    spec = get_suite("digits").protocol("quick").pgd
    from dataclasses import replace

    one = pgd_correct(trained_digits_model, points, THREAT, spec, "cpu", seed=0)
    three = pgd_correct(
        trained_digits_model, points, THREAT, replace(spec, restarts=3), "cpu", seed=0
    )
    clean = clean_correct(trained_digits_model, points, "cpu")
    assert one.sum() < clean.sum()
    assert three.sum() <= one.sum()


def test_wilson_interval_contains_estimate_and_shrinks_with_n():
    lo, hi = wilson_interval(70, 100)
    assert lo < 0.7 < hi
    lo2, hi2 = wilson_interval(700, 1000)
    assert hi2 - lo2 < hi - lo
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 1


def test_sanity_flags():
    assert sanity_flags(0.9, 0.5, 0.45, {"1x": 0.5, "2x": 0.2}) == {}
    flags = sanity_flags(0.9, 0.5, 0.6, {"1x": 0.5, "2x": 0.7})
    assert {"autoattack_above_pgd", "accuracy_rises_with_eps"} <= set(flags)


def test_out_of_memory_halves_the_batch():
    seen = []

    def fn(batch_size):
        seen.append(batch_size)
        if batch_size > 100:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return batch_size

    assert with_oom_retry(fn, 500) == 62
    assert seen == [500, 250, 125, 62]
    with pytest.raises(RuntimeError, match="shape"):
        with_oom_retry(lambda bs: (_ for _ in ()).throw(RuntimeError("shape mismatch")), 8)
