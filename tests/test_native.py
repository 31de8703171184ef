"""Paper-native metrics (rbench.evaluate.native): minimal-L2 attacks really flip predictions with a positive
perturbation, rho_2 is computed only where they did, FGSM accuracy does not rise with eps, and the
result is JSON-able."""

from __future__ import annotations

import json

import pytest
import torch

from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.evaluate import native


def _points(digits, n):
    split = digits.test.head(n)
    return split.images(slice(None)), split.y.long()


@pytest.mark.parametrize("name", ["deepfool_l2", "cw_l2"])
def test_minimal_l2_attacks_flip_the_prediction_with_a_positive_perturbation(
    name, trained_digits_model, digits
):
    model = trained_digits_model
    x, y = _points(digits, 60)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    x_adv, found = native.minimal_l2(model, x, y, name, "cpu")
    assert found.float().mean() > 0.8  # the attack works on an undefended-size model
    r = (x_adv - x).flatten(1).norm(dim=1)
    assert (r[found] > 0).all()
    with torch.no_grad():
        assert (model(x_adv[found]).argmax(1) != y[found]).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_native_metrics_record(trained_digits_model, digits, monkeypatch):
    monkeypatch.setattr(native, "MAX_POINTS", 40)
    # the full C&W schedule is exercised above; here a short one keeps the record test fast
    monkeypatch.setitem(native.SETTINGS, "cw_l2", {**native.SETTINGS["cw_l2"], "steps": 40})
    threat = get_suite("digits").threat
    out = native.native_metrics(
        trained_digits_model, digits.test, native.NAMES, threat, "cpu", seed=0
    )
    json.dumps(out)  # goes into the record as it is
    assert out["points"] == 40
    for name in ("deepfool_l2", "cw_l2"):
        entry = out[name]
        assert 0 < entry["n_found"] <= entry["n"] <= 40
        assert entry["rho2"] > 0 and entry["mean_l2"] > 0
    fgsm = out["fgsm"]
    accuracies = [row["accuracy"] for row in fgsm["by_eps"]]
    assert [row["eps"] for row in fgsm["by_eps"]] == sorted(row["eps"] for row in fgsm["by_eps"])
    assert all(b <= a for a, b in zip([fgsm["clean"], *accuracies], accuracies, strict=False))
    assert accuracies[-1] < fgsm["clean"]  # the largest eps does something


def test_rho2_counts_only_correct_points_where_the_attack_succeeded(trained_digits_model, digits):
    x, y = _points(digits, 40)
    wrong = y.clone()
    wrong[:20] = (y[:20] + 1) % 10  # half the labels wrong: those points are misclassified
    entry = native.minimal_l2_summary(trained_digits_model, x, wrong, "deepfool_l2", "cpu")
    with torch.no_grad():
        n_correct = int((trained_digits_model(x).argmax(1) == wrong).sum())
    assert entry["n"] == n_correct
    assert entry["n_found"] <= entry["n"]


def test_unknown_metric_is_a_clear_error(trained_digits_model, digits):
    with pytest.raises(RbenchError, match="unknown native metric"):
        native.native_metrics(
            trained_digits_model, digits.test, ["pgd_l7"], get_suite("digits").threat, "cpu"
        )
