"""Forward latency: `measure_latency` for the records, and `python -m rbench.perf.latency`, the table
of the CIFAR ResNet-18 dense against its Tucker-2 factorised forms (docs/latency.md).

Latency is the median wall time of `repeats` forward passes under torch.inference_mode, in eval
mode, after warm-up passes; on CUDA each pass is synchronised. Weights are whatever the model
holds (random ones time the same as trained ones).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from rbench.core.budget import compressible_layers
from rbench.data.models import build_model
from rbench.layers.factorised import factorise
from rbench.layers.ranks import plan_global


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    repeats: int | None = None,
    budget_s: float = 0.5,
) -> dict:
    """Median forward time in milliseconds of `model` on a batch of zeros. Without `repeats`, as
    many passes as fit in about `budget_s` seconds (at least 3, at most 50), so the call stays
    cheap for the record. The model is left in eval mode on `device`."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.zeros(batch_size, *input_shape, device=device)
    synchronize(device)
    start = time.perf_counter()
    model(x)  # warm-up: allocator, kernel selection
    synchronize(device)
    first = time.perf_counter() - start
    if repeats is None:
        repeats = int(min(50, max(3, budget_s / max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "ms": 1e3 * statistics.median(times),
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def resnet18_variants(ratios: tuple[float, ...]) -> dict[str, nn.Module]:
    """The CIFAR ResNet-18 dense, and Tucker-2 factorised at each ratio with cstar's plan (first
    conv and last linear dense, global ranks by the spectra of the random weights)."""
    torch.manual_seed(0)
    dense = build_model("resnet18", (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    first, *_, last = compressible_layers(dense)
    models = {"dense": dense}
    for ratio in ratios:
        ranks = plan_global(dense, ratio, dense=[first, last])
        models[f"tucker2 x{ratio:g}"] = factorise(copy.deepcopy(dense), ranks, project=False)
    return models


@torch.inference_mode()
def latency_table(
    ratios: tuple[float, ...] = (4, 16),
    batch_sizes: tuple[int, ...] = (1, 128),
    devices: tuple[str, ...] = ("cpu",),
    repeats: int = 10,
) -> list[dict]:
    """Median forward time of each model per device and batch size. The models take turns within
    every repeat, so a change of machine load affects them alike."""
    models, rows = resnet18_variants(ratios), []
    for device in map(torch.device, devices):
        for batch in batch_sizes:
            x = torch.zeros(batch, 3, 32, 32, device=device)
            times: dict[str, list[float]] = {name: [] for name in models}
            for model in models.values():
                model.to(device).eval()(x)  # warm-up
            for _ in range(repeats):
                for name, model in models.items():
                    synchronize(device)
                    start = time.perf_counter()
                    model(x)
                    synchronize(device)
                    times[name].append(time.perf_counter() - start)
            dense_ms = 1e3 * statistics.median(times["dense"])
            for name, t in times.items():
                ms = 1e3 * statistics.median(t)
                rows.append(
                    {
                        "model": name,
                        "device": str(device),
                        "batch_size": batch,
                        "ms": ms,
                        "repeats": repeats,
                        "threads": torch.get_num_threads(),
                        "speedup": dense_ms / ms,
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[4, 16])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("latency.json"))
    args = parser.parse_args(argv)
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows = latency_table(tuple(args.ratios), tuple(args.batch_sizes), devices, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(f"{'model':<14} {'device':<6} {'batch':>5} {'median ms':>10} {'speed-up':>8}")
    for r in rows:
        print(
            f"{r['model']:<14} {r['device']:<6} {r['batch_size']:>5} {r['ms']:>10.2f} "
            f"{r['speedup']:>8.2f}"
        )
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(args.out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
