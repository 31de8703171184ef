"""The CUDA path (skipped without a GPU): the same run on `--device cuda` works end to end, and
GPU evaluation agrees with the CPU on the same model and points."""

from dataclasses import replace

import pytest
import torch

from rbench.evaluate import autoattack_correct, clean_correct
from rbench.runner import RunConfig, Runner
from rbench.suites import SUITES, Protocol, ThreatModel, get_suite, register_suite

pytestmark = pytest.mark.gpu


def test_cuda_run_end_to_end(tmp_path):
    base = get_suite("digits")
    suite = replace(
        base,
        name="digits-gpu",
        dense=replace(base.dense, epochs=3),
        compress_epochs=1,
        default_protocol="quick",
        protocols=tuple(replace(p, n_eval=50) for p in base.protocols),
    )
    register_suite(suite)
    try:
        record = Runner(
            RunConfig(
                method="magnitude",
                ratio=8,
                suite=suite.name,
                device="cuda",
                results_dir=str(tmp_path / "r"),
                cache_dir=str(tmp_path / "c"),
                quiet=True,
            )
        ).run()
    finally:
        SUITES.pop(suite.name)
    assert record["compression"]["ratio"] >= 8
    assert record["environment"]["device"] != "cpu"
    assert record["metrics"]["autoattack"]["accuracy"] <= record["metrics"]["clean"]["accuracy"]


def test_gpu_evaluation_matches_cpu(trained_digits_model, digits):
    points = digits.test.head(40)
    protocol = Protocol(
        "quick",
        40,
        get_suite("digits").protocol("quick").pgd,
        "custom",
        ("apgd-ce",),
        apgd_restarts=1,
    )
    threat = ThreatModel("Linf", "0.1")
    cpu_clean = clean_correct(trained_digits_model, points, "cpu")
    gpu_model = trained_digits_model.to("cuda")
    gpu_clean = clean_correct(gpu_model, points.to("cuda"), "cuda")
    assert torch.equal(cpu_clean, gpu_clean)
    robust, _ = autoattack_correct(gpu_model, points.to("cuda"), threat, protocol, "cuda")
    assert robust.sum() <= gpu_clean.sum()
