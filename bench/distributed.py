"""Data-parallel training of a suite's dense model on several GPUs (or CPU processes) with
torchrun and DistributedDataParallel (design.md 9; docs/performance.md, "Several GPUs").

    torchrun --nproc_per_node 4 -m rbench.distributed --suite cifar10-resnet18 \\
        --data-root ~/data --out dense.safetensors
    rbench run --method cstar --ratio 16 --suite cifar10-resnet18 --data-root ~/data \\
        --dense-checkpoint dense.safetensors

- The process group is set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT) only when WORLD_SIZE > 1: NCCL with one GPU per process, gloo on CPU.
  With WORLD_SIZE 1 (or unset) nothing is initialised and training is the single-device one.
- Every process holds the training split resident on its device and `ShardedBatchLoader` gives
  it DistributedSampler's share: each epoch one permutation of all points, the same on every
  rank (seeded by seed and epoch), padded by wrapping to a multiple of the world size, rank r
  taking every world-size-th point from r. Every rank gets the same number of batches.
- The recipe's batch size is the global one: each rank trains on batch_size / world_size, and DDP
  averages the gradients, so the optimiser sees the recipe's batch. BatchNorm statistics are
  per rank (no SyncBatchNorm), as with DDP's defaults.
- DDP wraps only the module the training loss calls (`fit(wrap=...)`); the PGD attack calls the
  unwrapped model, so its input-gradient passes trigger no gradient all-reduce.
- Rank 0 alone writes (the weights as safetensors, the progress lines).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from rbench.core.errors import RbenchError
from rbench.data.splits import BatchLoader, Split, crop_flip


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when WORLD_SIZE > 1; otherwise a world of one."""
    from rbench.core.config import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.get_world_size() != world:
        raise RbenchError(
            f"WORLD_SIZE is {world} but the process group has {dist.get_world_size()}"
        )
    return DistInfo(
        rank, world, local, torch.device("cuda", local) if use_cuda else torch.device("cpu")
    )


def ddp_wrapper(info: DistInfo) -> Callable[[nn.Module], nn.Module] | None:
    """`fit(wrap=...)` for this process: DistributedDataParallel, or None in a world of one.
    DDP copies rank 0's parameters and buffers to every rank when it wraps the model."""
    if not info.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return lambda module: DistributedDataParallel(module, device_ids=device_ids)


class ShardedBatchLoader(BatchLoader):
    """Batches of this rank's share of a resident split (DistributedSampler's split, see the
    module docstring). In a world of one it yields exactly what `BatchLoader` yields."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: str = "none",
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise RbenchError(f"rank {rank} is outside a world of {world_size}")
        super().__init__(
            split, batch_size, shuffle=shuffle, seed=seed, augment=augment, drop_last=drop_last
        )
        self.rank, self.world_size = rank, world_size

    @property
    def shard_size(self) -> int:
        return math.ceil(len(self.split) / self.world_size)

    @property
    def num_samples(self) -> int:
        n = self.shard_size
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        n = self.shard_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def shard_indices(self, gen: torch.Generator) -> torch.Tensor:
        n = len(self.split)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        total = self.shard_size * self.world_size
        if total > n:  # wrap around, as DistributedSampler pads
            order = torch.cat([order, order.repeat(math.ceil(total / n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.split.y.device
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        mine = self.shard_indices(gen).to(device, non_blocking=True)
        # rank 0 draws its augmentation after the permutation, like BatchLoader; the others
        # from their own stream, so no two ranks crop alike
        aug = (
            gen
            if self.rank == 0
            else torch.Generator().manual_seed(
                (self.seed * 100_003 + self.epoch) * 1_009 + self.rank
            )
        )
        for b in range(len(self)):
            idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.split.images(idx)
            if self.augment == "crop-flip":
                x = crop_flip(x, aug)
            yield x, self.split.y[idx]


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise RbenchError(
            f"the recipe's batch size {batch_size} does not split over {world_size} processes; "
            "use a number of processes that divides it"
        )
    return batch_size // world_size


def train_dense(suite_name: str, data_root: str | None, seed: int, out: str, device: str) -> dict:
    """Adversarially train `suite_name`'s dense model with its recipe over torchrun's processes;
    rank 0 writes the weights to `out` (safetensors). Returns what was done."""
    from rbench.core.suites import get_suite
    from rbench.data.datasets import load_data
    from rbench.data.models import build_model
    from rbench.store.cache import save_tensors
    from rbench.train.trainer import fit_recipe, recipe_parts

    info = init_from_env(device)
    suite = get_suite(suite_name)
    recipe, d = suite.dense, suite.data
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if info.is_main else (lambda m: None)
    try:
        data = load_data(suite.dataset, data_root)
        loader = ShardedBatchLoader(
            data.train.to(info.device),
            per_rank_batch(recipe.batch_size, info.world_size),
            rank=info.rank,
            world_size=info.world_size,
            shuffle=True,
            seed=seed,
            augment=recipe.augment,
        )
        torch.manual_seed(seed)
        model = build_model(suite.arch, d.input_shape, d.num_classes, d.mean, d.std).to(info.device)
        attack, meter, optimizer = recipe_parts(model, recipe, suite.threat, loader.num_samples)
        say(
            f"dense model of {suite.name}: {recipe.epochs} epochs of PGD-{attack.steps} AT on "
            f"{info.world_size} process(es), {loader.batch_size} images per process and step"
        )
        fit_recipe(
            model,
            loader,
            recipe,
            attack=attack,
            meter=meter,
            optimizer=optimizer,
            # a different attack start per rank; rank 0 keeps the single-process seed
            seed=seed + 1_000_003 * info.rank,
            wrap=ddp_wrapper(info),
            progress=lambda e, s: say(
                f"  epoch {e + 1}/{recipe.epochs}: loss {s['loss']:.3f}, "
                f"adversarial train acc {s['accuracy']:.3f} (rank 0)"
            ),
        )
        if info.is_main:
            save_tensors(out, model.state_dict())
            say(f"written to {out}")
        if info.distributed:
            dist.barrier()
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()
    return {"suite": suite.name, "world_size": info.world_size, "out": out}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m rbench.distributed",
        description="Train a suite's dense model with DDP; pass the result to rbench run "
        "--dense-checkpoint.",
    )
    p.add_argument("--suite", required=True)
    p.add_argument("--data-root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", required=True, help="where rank 0 writes the weights (.safetensors)")
    args = p.parse_args(argv)
    try:
        train_dense(args.suite, args.data_root, args.seed, args.out, args.device)
    except RbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
