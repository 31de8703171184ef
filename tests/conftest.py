"""Shared fixtures and checks: the embedded digits data, a briefly adversarially trained small CNN
on it (and its checkpoint), a factory of method contexts, tiny digits suites for end-to-end runs,
the `rbench` command run in-process, and checks several test files make. Nothing here downloads
anything. Test files import the plain functions with `from conftest import ...`."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import load_file, save_file

from rbench.cli import main
from rbench.core.budget import Budget, ComputeMeter
from rbench.core.suites import SUITES, Suite, get_suite, register_suite
from rbench.data.datasets import load_data
from rbench.data.models import build_model
from rbench.data.splits import BatchLoader
from rbench.layers import rebuild, structure_of
from rbench.train.context import Context
from rbench.train.trainer import fit

DIGITS_SHAPE = (1, 8, 8)


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


@pytest.fixture
def dense_checkpoint(tmp_path, trained_digits_model) -> Path:
    """The briefly trained digits model saved as tmp_path/dense.safetensors."""
    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in trained_digits_model.state_dict().items()}, path)
    return path


# ------------------------------------------------------------------------- tiny suites


def tiny_digits(
    name: str, *, dense_epochs: float, compress_epochs: float, n_eval: int, **protocol
) -> Suite:
    """digits cut down for end-to-end runs: `dense_epochs` of dense training, a budget of
    `compress_epochs` AT-epochs, the quick protocol by default and `n_eval` evaluation points;
    `protocol` changes every protocol further (e.g. batch_size=10)."""
    base = get_suite("digits")
    return replace(
        base,
        name=name,
        dense=replace(base.dense, epochs=dense_epochs),
        compress_epochs=compress_epochs,
        default_protocol="quick",
        protocols=tuple(replace(p, n_eval=n_eval, **protocol) for p in base.protocols),
    )


@contextlib.contextmanager
def registered(suite: Suite) -> Iterator[str]:
    """Register `suite` the way a plugin would while the block runs; yields its name."""
    register_suite(suite)
    try:
        yield suite.name
    finally:
        SUITES.pop(suite.name)


# ------------------------------------------------------------------------- the command line


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys) -> Callable[..., CliResult]:
    """cli(*args) -> (exit code, stdout, stderr) of `rbench ARGS` run in this process."""

    def invoke(*args: str) -> CliResult:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        return CliResult(exit_info.value.code, captured.out, captured.err)

    return invoke


# ------------------------------------------------------------------------- shared checks


class FitSpy:
    """Wraps ctx.fit: records the arguments of each call and snapshot(model) before and after it."""

    def __init__(self, ctx: Context, snapshot: Callable[[torch.nn.Module], dict]):
        self.fit, self.snapshot, self.calls = ctx.fit, snapshot, []
        ctx.fit = self

    def __call__(self, model, **kwargs):
        call = {"kwargs": kwargs, "before": self.snapshot(model)}
        out = self.fit(model, **kwargs)
        call["after"] = self.snapshot(model)
        self.calls.append(call)
        return out


def assert_reloads_exactly(
    model: torch.nn.Module, skeleton: torch.nn.Module, tmp_path: Path, input_shape=DIGITS_SHAPE
) -> dict:
    """`model` (in eval mode) saved as safetensors and rebuilt on `skeleton` from its structure,
    passed through JSON (never a pickle), gives the same outputs to the bit. Returns the structure."""
    structure = json.loads(json.dumps(structure_of(model)))
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    loaded = rebuild(skeleton, structure)
    loaded.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x = torch.rand(8, *input_shape)
    assert torch.equal(loaded.eval()(x), model(x))
    return structure


COMPARED = ("metrics", "compression", "hashes", "cache", "budget", "flags")


def assert_same_run(a: dict, b: dict) -> None:
    """Everything a run computes agrees; only timings, dates and cache reuse may differ."""
    for key in COMPARED:
        assert a[key] == b[key], key
    assert a["compute"]["used_epochs"] == b["compute"]["used_epochs"]


def tiny_cli_script(name: str, compress_epochs: float, batch_size: int) -> str:
    """Python source for a child process: register a tiny digits suite `name` the way a plugin
    would, then run the real CLI on sys.argv (for tests that kill or compare whole processes)."""
    return f"""
import sys
from dataclasses import replace
from rbench.core.suites import get_suite, register_suite
from rbench.cli import main
base = get_suite("digits")
register_suite(replace(base, name="{name}", dense=replace(base.dense, epochs=6),
                       compress_epochs={compress_epochs}, default_protocol="quick",
                       protocols=tuple(replace(p, n_eval=40, batch_size={batch_size})
                                       for p in base.protocols)))
main(sys.argv[1:])
"""
