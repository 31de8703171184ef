"""Shared fixtures: the embedded digits data, a briefly adversarially trained small CNN on it, and
a factory of method contexts. Nothing here downloads anything."""

from __future__ import annotations

import copy

import pytest
import torch

from rbench.budget import Budget, ComputeMeter
from rbench.context import Context
from rbench.data import BatchLoader, load_data
from rbench.models import build_model
from rbench.suites import get_suite
from rbench.train import fit


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


def new_digits_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    info = get_suite("digits").data
    return build_model("smallcnn", info.input_shape, info.num_classes, info.mean, info.std)


@pytest.fixture(scope="session")
def _trained_digits_state(digits):
    """A smallcnn after 3 epochs of PGD-AT on digits (a few seconds on a CPU)."""
    suite = get_suite("digits")
    model = new_digits_model()
    attack = suite.dense.attack.pgd(suite.threat)
    loader = BatchLoader(digits.train, 64, shuffle=True, seed=0)
    fit(
        model,
        loader,
        attack=attack,
        meter=ComputeMeter(len(digits.train), attack.steps),
        epochs=3,
        lr=1e-3,
        optimizer="adam",
        loss="adv",
    )
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def trained_digits_model(_trained_digits_state):
    """A fresh copy of the briefly trained digits model (tests may change it freely)."""
    model = new_digits_model()
    model.load_state_dict(_trained_digits_state)
    return model.eval()


@pytest.fixture
def make_ctx(digits):
    """make_ctx(ratio=..., epochs=..., seed=0) -> a method Context on the digits suite."""

    def factory(ratio: float = 4.0, epochs: float = 1.0, seed: int = 0) -> Context:
        suite = get_suite("digits")
        budget = Budget(ratio=ratio, epochs=epochs)
        meter = ComputeMeter(len(digits.train), suite.dense.attack.steps, limit_epochs=epochs)
        return Context(
            suite=suite,
            data=digits,
            device=torch.device("cpu"),
            seed=seed,
            budget=budget,
            meter=meter,
            quiet=True,
        )

    return factory
