"""The fast training path (docs/performance.md): precision and memory-format settings of the
shared trainer, no per-batch host reads, the speed script, and DDP sharding and training. The
CUDA-only checks are marked `gpu` and skipped without a GPU."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from conftest import new_digits_model
from torch import nn

from rbench.core.budget import ComputeMeter
from rbench.core.errors import RbenchError
from rbench.core.pgd import PGD
from rbench.data.splits import BatchLoader
from rbench.distributed import ShardedBatchLoader
from rbench.perf.speed import synthetic_split
from rbench.train import trainer as train_module
from rbench.train.trainer import (
    StepHooks,
    fit,
    resolve_channels_last,
    resolve_precision,
    train_epoch,
)


def bn_model(seed: int = 0, channels: int = 1) -> nn.Module:
    """A small conv net with BatchNorm (the layer whose kernels care most about layout)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def attack() -> PGD:
    return PGD("Linf", 0.1, 0.05, 2)


# ------------------------------------------------------------------ settings


def test_auto_settings_are_plain_fp32_on_cpu_and_fast_on_cuda():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_channels_last("auto", "cpu") == "off"
    assert resolve_channels_last("auto", "cuda") == "inputs"
    with pytest.raises(RbenchError, match="unknown precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(RbenchError, match="unknown channels_last"):
        resolve_channels_last("yes", "cpu")


def test_auto_defaults_change_nothing_on_cpu(digits):
    """fit's defaults on CPU are bit-for-bit plain fp32 training (the CI baseline depends on it)."""
    split = digits.train.head(256)
    runs = []
    for settings in ({}, {"precision": "fp32", "channels_last": "off", "compile": False}):
        model = new_digits_model()
        fit(
            model,
            BatchLoader(split, 64, shuffle=True, augment="crop-flip"),
            attack=attack(),
            meter=ComputeMeter(len(split), 2),
            epochs=1,
            lr=1e-3,
            optimizer="adam",
            **settings,
        )
        runs.append(weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_bf16_training_runs_and_learns_on_cpu(digits):
    split = digits.train.head(512)
    model = new_digits_model()
    dtypes = []
    model.net[0][0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    losses = []
    fit(
        model,
        BatchLoader(split, 64, shuffle=True),
        attack=None,
        meter=ComputeMeter(len(split), 0),
        epochs=4,
        lr=3e-3,
        optimizer="adam",
        loss="ce",
        precision="bf16",
        on_epoch_end=lambda e, s: losses.append(s["loss"]),
    )
    assert set(dtypes) == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    assert losses[-1] < 0.7 * losses[0]
    # the adversarial loss (attack under autocast too) runs and stays finite
    dtypes.clear()
    stats = train_epoch(
        model,
        BatchLoader(split, 64),
        torch.optim.SGD(model.parameters(), lr=0.01),
        attack=attack(),
        meter=ComputeMeter(len(split), 2),
        precision="bf16",
        max_batches=2,
    )
    assert torch.isfinite(torch.tensor(stats["loss"])) and set(dtypes) == {torch.bfloat16}


def test_channels_last_training_matches_and_restores_the_layout():
    """The model sees channels-last inputs exactly when asked; "model" trains like
    contiguous (to tolerance), keeps the parameter objects (an optimiser built before fit still
    drives them) and leaves them contiguous."""
    split = synthetic_split(128, seed=0)  # 3 channels: a 1-channel image is in both layouts
    results = []
    for layout in ("off", "inputs", "model"):
        model = bn_model(channels=3)
        seen = set()
        model[3].register_forward_pre_hook(  # the second conv: past the first conv's output
            lambda _m, args, seen=seen: seen.add(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        fit(
            model,
            BatchLoader(split, 32),
            attack=attack(),
            meter=ComputeMeter(len(split), 2),
            epochs=1,
            lr=0.05,
            optimizer=optimizer,
            channels_last=layout,
        )
        assert seen == {layout != "off"}, layout
        assert [id(p) for p in model.parameters()] == [id(p) for p in params]
        assert all(p.is_contiguous() for p in model.parameters())
        results.append(weights(model))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(other[k], results[0][k], rtol=1e-3, atol=1e-4)


def test_compile_wraps_the_forward_passes_only(digits, monkeypatch):
    """compile=True runs the attack and the loss through torch.compile's module (here a stand-in
    that counts calls: compiling for real takes too long for a unit test); the weights trained
    are the caller's."""
    calls = []

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(len(x))
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda module, **_: Counting(module))
    split = digits.train.head(64)
    model = new_digits_model()
    before = weights(model)
    fit(
        model,
        BatchLoader(split, 32),
        attack=attack(),
        meter=ComputeMeter(len(split), 2),
        epochs=1,
        lr=1e-3,
        optimizer="adam",
        compile=True,
    )
    assert len(calls) == 2 * (2 + 1)  # 2 batches x (2 attack steps + the training forward)
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())


# ------------------------------------------------------------------ no host reads per batch


class HostReads:
    """Counts tensor-to-Python conversions (each one waits for the device on a GPU)."""

    NAMES = ("item", "__bool__", "__int__", "__float__", "tolist")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def _epoch(model, split, batches, **kwargs):
    return train_epoch(
        model,
        BatchLoader(split, 32, augment="crop-flip"),
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        attack=attack(),
        meter=ComputeMeter(len(split), 2),
        generator=torch.Generator().manual_seed(0),
        max_batches=batches,
        **kwargs,
    )


def test_train_epoch_reads_the_device_once_per_epoch(digits, monkeypatch):
    """With the deferred checks of a GPU, the host reads the same few values whether the epoch has
    2 batches or 6, and the statistics equal those of the per-batch CPU path."""
    split = digits.train.head(192)
    expected = [_epoch(new_digits_model(), split, n) for n in (2, 6)]  # CPU path: checks per batch
    monkeypatch.setattr(train_module, "defers_checks", lambda device: True)
    counts, stats = [], []
    for n in (2, 6):
        model = new_digits_model()
        reads = HostReads(monkeypatch)
        stats.append(_epoch(model, split, n))
        counts.append(reads.count)
        monkeypatch.undo()
        monkeypatch.setattr(train_module, "defers_checks", lambda device: True)
    assert counts[0] == counts[1] <= 3
    assert stats == expected


def test_deferred_check_still_names_the_bad_batch(digits, monkeypatch):
    monkeypatch.setattr(train_module, "defers_checks", lambda device: True)
    seen = []

    def regularizer(model):
        seen.append(1)
        return torch.tensor(float("nan") if len(seen) == 3 else 0.0)

    with pytest.raises(RbenchError, match="training loss became non-finite at batch 2"):
        _epoch(
            new_digits_model(), digits.train.head(192), 6, hooks=StepHooks(regularizer=regularizer)
        )


@pytest.mark.gpu
def test_cuda_epoch_has_no_host_sync(digits):
    """On CUDA, a PGD-AT epoch under bf16 and channels-last never blocks on the device before its
    final read (torch's sync debug mode raises on any synchronising call)."""
    device = torch.device("cuda")
    split = digits.train.head(256).to(device)
    model = new_digits_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = BatchLoader(split, 64, shuffle=True, augment="crop-flip")
    for loss in ("ce", "adv"):
        steps = []
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with pytest.raises(RuntimeError, match="synchroniz"):
                train_epoch(
                    model,
                    loader,
                    optimizer,
                    attack=attack() if loss == "adv" else None,
                    meter=ComputeMeter(len(split), 2),
                    loss=loss,
                    hooks=StepHooks(after_step=lambda m, steps=steps: steps.append(1)),
                    generator=torch.Generator().manual_seed(0),
                    precision="auto",
                    channels_last="auto",
                    max_batches=3,
                )
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(steps) == 3, loss  # every step ran: the first sync is the epoch's final read


@pytest.mark.gpu
def test_cuda_bf16_epoch_matches_fp32_statistics(digits):
    device = torch.device("cuda")
    split = digits.train.head(256).to(device)
    stats = [
        _epoch(new_digits_model().to(device), split, 4, precision=p, channels_last=c)
        for p, c in (("fp32", "off"), ("bf16", "inputs"))
    ]
    assert abs(stats[0]["loss"] - stats[1]["loss"]) < 0.05


# ------------------------------------------------------------------ the speed script


def test_speed_script_runs_end_to_end(tmp_path):
    from rbench.perf.speed import main

    out = tmp_path / "speed.json"
    main(
        [
            "--device",
            "cpu",
            "--arch",
            "smallcnn",
            "--n-train",
            "128",
            "--n-eval",
            "8",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--warmup-batches",
            "1",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert {"schema", "mode", "environment", "config", "training", "autoattack", "targets"} <= set(
        result
    )
    assert result["mode"] == "custom configuration"
    assert {"device", "torch", "pyautoattack"} <= set(result["environment"])
    training, aa = result["training"], result["autoattack"]
    assert training["rbench_s"] > 0 and training["textbook_s"] > 0
    assert training["speedup"] == pytest.approx(training["textbook_s"] / training["rbench_s"])
    assert aa["overhead"] == pytest.approx(aa["rbench_s"] / aa["direct_s"] - 1)
    assert aa["agree"] is True  # same seed, same model, same points: same robust accuracy
    assert result["targets"]["applies"] is False and result["targets"]["met"] is None


# ------------------------------------------------------------------ several processes


def test_sharded_loader_is_distributed_sampler_split(digits):
    split = digits.train.head(101)
    plain = BatchLoader(split, 16, shuffle=True, seed=3, augment="crop-flip")
    single = ShardedBatchLoader(
        split, 16, rank=0, world_size=1, shuffle=True, seed=3, augment="crop-flip"
    )
    for loader in (plain, single):
        loader.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(plain, single, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    shards = [ShardedBatchLoader(split, 16, rank=r, world_size=2, shuffle=True) for r in (0, 1)]
    gens = [torch.Generator().manual_seed(0) for _ in shards]
    ids = [s.shard_indices(g) for s, g in zip(shards, gens, strict=True)]
    assert len(ids[0]) == len(ids[1]) == 51 and len(shards[0]) == len(shards[1]) == 4
    assert set(torch.cat(ids).tolist()) == set(range(101))  # all covered; one point padded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, split, out_dir: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    from rbench.distributed import ShardedBatchLoader, ddp_wrapper, init_from_env

    info = init_from_env("cpu")
    try:
        model = new_digits_model(seed=rank)  # different inits: DDP must start them from rank 0's
        loader = ShardedBatchLoader(
            split, 16, rank=info.rank, world_size=info.world_size, shuffle=True
        )
        fit(
            model,
            loader,
            attack=attack(),
            meter=ComputeMeter(loader.num_samples, 2),
            epochs=3 / len(loader),  # three steps
            lr=0.05,
            optimizer="sgd",
            seed=rank,
            wrap=ddp_wrapper(info),
        )
        torch.save(weights(model), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch: about 6 s on an idle 2-core CPU
def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(digits, tmp_path):
    import torch.multiprocessing as mp

    split = digits.train.head(128)
    mp.spawn(_ddp_worker, args=(2, _free_port(), split, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    start = weights(new_digits_model(seed=0))
    for k in start:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    assert any(not torch.equal(ranks[0][k], start[k]) for k in start)  # and they trained
