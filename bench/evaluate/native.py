"""Paper-native robustness metrics, added to a record when a method names them in its
`native_metrics` (methods.md, "How the harness runs them"). All attacks come from foolbox 3.3.4,
a well-kept attack library, never from hand-written code.

Metrics (Guo et al., NeurIPS 2018, section 2 of methods.md; their exact settings are UNVERIFIED):
- "deepfool_l2": DeepFool L2 (Moosavi-Dezfooli et al. 2016), a minimal-perturbation attack;
- "cw_l2": Carlini & Wagner L2 (2017), a minimal-perturbation attack;
  for both: rho_2 = mean ||r||_2 / ||x||_2 over the correctly classified points on which the
  attack succeeded (higher = more robust), with the success rate and the counts;
- "fgsm": accuracy under one-step FGSM (FGM for an L2 threat) at a few small eps, given as
  fractions of the suite's eps (the Guo et al. and CondLR papers use small eps).

The harness's settings (SETTINGS below; the paper's are UNVERIFIED) keep an evaluation bounded in
time: at most 100 points; DeepFool 50 steps, overshoot 0.02, 10 candidate classes (the standard
setting); C&W 5 binary-search steps x 200 Adam steps (step 0.05, initial constant 1) instead of the
standard 9 x 1000 (step 0.01, constant 1e-3): on a test model it finds the same points at nearly
the same rho_2 in a fraction of the time (docs/findings.md, "harness"). Everything runs in eval
mode, fp32, inputs in [0, 1] with foolbox bounds (0, 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from rbench.core.errors import RbenchError
from rbench.core.suites import ThreatModel
from rbench.data.splits import Split

MAX_POINTS = 100
SETTINGS = {
    "deepfool_l2": {"steps": 50, "candidates": 10, "overshoot": 0.02, "loss": "logits"},
    "cw_l2": {
        "binary_search_steps": 5,
        "steps": 200,
        "stepsize": 0.05,
        "confidence": 0.0,
        "initial_const": 1.0,
        "abort_early": True,
    },
    "fgsm": {"eps_fractions": (0.125, 0.25, 0.5, 1.0), "random_start": False},
}
NAMES = tuple(SETTINGS)


def native_metrics(
    model: nn.Module,
    split: Split,
    names: Iterable[str],
    threat: ThreatModel,
    device: torch.device | str,
    seed: int = 0,
) -> dict:
    """The named metrics on the first MAX_POINTS points of `split`, as a JSON-able dict. The
    attacks are deterministic; `seed` only fixes torch's global RNG around them."""
    names = tuple(names)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise RbenchError(f"unknown native metric(s) {unknown}; choose from {', '.join(NAMES)}")
    points = split.head(min(len(split), MAX_POINTS))
    x = points.images(slice(None)).to(device)
    y = points.y.to(device).long()
    model = model.to(device).eval()
    out: dict = {"points": len(y)}
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for name in names:
            if name == "fgsm":
                out[name] = fgsm_accuracy(model, x, y, threat, device)
            else:
                out[name] = minimal_l2_summary(model, x, y, name, device)
    return out


def _foolbox():
    """foolbox 3.3.4, imported without its own DeprecationWarning (scipy.ndimage.filters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox
    return foolbox


def _foolbox_model(model: nn.Module, device):
    foolbox = _foolbox()
    return foolbox.PyTorchModel(model.eval(), bounds=(0, 1), device=torch.device(device))


def _l2_attack(name: str):
    foolbox = _foolbox()

    s = SETTINGS[name]
    if name == "deepfool_l2":
        return foolbox.attacks.L2DeepFoolAttack(**s)
    if name == "cw_l2":
        return foolbox.attacks.L2CarliniWagnerAttack(**s)
    raise RbenchError(f"'{name}' is not a minimal-perturbation attack")


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def minimal_l2(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial images, found) for every point of x under the named minimal-L2 attack.
    `found` is True where the returned image is a real adversarial example: it flips the
    prediction away from y. (foolbox's C&W returns an all-zero image where it found nothing, which
    the model may well misclassify, so such images never count.)"""
    if len(y) == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    _, x_adv, _ = _l2_attack(name)(_foolbox_model(model, device), x, y, epsilons=None)
    x_adv = x_adv.detach()
    flipped = _predict(model, x_adv) != y
    not_blank = x_adv.flatten(1).abs().sum(1) > 0
    return x_adv, flipped & not_blank


def minimal_l2_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, device):
    """rho_2 and friends over the correctly classified points (Guo et al.'s measure)."""
    correct = _predict(model, x) == y
    xc, yc = x[correct], y[correct]
    x_adv, found = minimal_l2(model, xc, yc, name, device)
    r = (x_adv - xc).flatten(1).norm(dim=1)
    rel = r / xc.flatten(1).norm(dim=1).clamp_min(1e-12)
    n_found = int(found.sum())
    return {
        "rho2": float(rel[found].mean()) if n_found else None,
        "mean_l2": float(r[found].mean()) if n_found else None,
        "median_l2": float(r[found].median()) if n_found else None,
        "success_rate": n_found / max(len(yc), 1),
        "n": len(yc),
        "n_found": n_found,
        "settings": dict(SETTINGS[name]),
    }


def fgsm_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, device
) -> dict:
    """Accuracy under FGSM (L_inf; FGM for an L2 threat) at fractions of the suite's eps. A point
    misclassified without attack counts as wrong at every eps."""
    foolbox = _foolbox()

    fractions = SETTINGS["fgsm"]["eps_fractions"]
    eps = [f * threat.eps_value for f in fractions]
    random_start = SETTINGS["fgsm"]["random_start"]
    attack = (
        foolbox.attacks.FGSM(random_start=random_start)
        if threat.norm == "Linf"
        else foolbox.attacks.FGM(random_start=random_start)
    )
    _, clipped, _ = attack(_foolbox_model(model, device), x, y, epsilons=eps)
    rows = []
    for f, e, x_adv in zip(fractions, eps, clipped, strict=True):
        correct = _predict(model, x_adv.detach()) == y
        rows.append(
            {"eps_fraction": f, "eps": e, "accuracy": float(correct.float().mean()), "n": len(y)}
        )
    clean = float((_predict(model, x) == y).float().mean())
    return {"norm": threat.norm, "clean": clean, "by_eps": rows}
