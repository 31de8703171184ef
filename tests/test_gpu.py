"""The CUDA path (skipped without a GPU): the same run on `--device cuda` works end to end, and
GPU evaluation agrees with the CPU on the same model and points."""

import pytest
import torch
from conftest import registered, tiny_digits

from rbench.core.config import RunConfig
from rbench.core.suites import Protocol, ThreatModel, get_suite
from rbench.evaluate.accuracy import autoattack_correct, clean_correct
from rbench.runner import Runner

pytestmark = pytest.mark.gpu


def test_cuda_run_end_to_end(tmp_path):
    suite = tiny_digits("digits-gpu", dense_epochs=3, compress_epochs=1, n_eval=50)
    with registered(suite) as name:
        record = Runner(
            RunConfig(
                method="magnitude",
                ratio=8,
                suite=name,
                device="cuda",
                results_dir=str(tmp_path / "r"),
                cache_dir=str(tmp_path / "c"),
                quiet=True,
            )
        ).run()
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
