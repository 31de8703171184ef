"""`make bench` / `python -m rbench.perf.speed`: rbench's training and evaluation speed, side by side
with the plain PyTorch way of doing the same thing, on one model and one data set (docs/performance.md).

Two comparisons, each on the same model, the same synthetic data of CIFAR shape (3x32x32 uint8
images, 10 random labels) and the same device:
1. one PGD-AT epoch (Madry et al. 2018; Linf eps 8/255, step 2/255, PGD-`steps`, SGD, batch 128,
   random crop + flip) through rbench's shared trainer (`rbench.train.trainer.fit`, with its GPU
   settings: data resident on the device, augmentation there, bf16 autocast, channels-last
   inputs, no per-batch host synchronisation) against the textbook loop written below in plain
   PyTorch: a `DataLoader` over host memory with per-sample torchvision transforms, fp32, the
   usual `.item()` per batch;
2. AutoAttack (pyautoattack) through rbench's evaluation path (`rbench.evaluate.accuracy.autoattack_correct`)
   against pyautoattack called directly, same seed: the overhead of rbench's wrapper, and whether
   both give the same robust accuracy.

Defaults: the full configuration of the targets (ResNet-18, 50,000 images, PGD-10) where CUDA is
present, a small one (smallcnn, 512 images, PGD-2) on a CPU; the output says which. Figures go to
a JSON file with the device and library versions (default bench-results/speed-<device>.json).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from rbench.core.budget import ComputeMeter
from rbench.core.pgd import PGD
from rbench.core.suites import AttackSpec, Protocol, ThreatModel
from rbench.data.models import build_model
from rbench.data.splits import BatchLoader, Split
from rbench.perf.latency import synchronize
from rbench.perf.textbook import BATCH_SIZE, EPS, STEP, textbook_epoch, textbook_loader
from rbench.store.cache import atomic_write_json
from rbench.store.records import environment
from rbench.train.trainer import fit, resolve_channels_last, resolve_precision

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# targets of issue 7, on an H100 at the full configuration
TARGETS = {"pgd_epoch_speedup_min": 3.0, "pgd_epoch_max_s": 8.0, "autoattack_overhead_max": 0.02}
FULL = {"arch": "resnet18", "n_train": 50_000, "n_eval": 1000, "steps": 10}
SMALL = {"arch": "smallcnn", "n_train": 512, "n_eval": 32, "steps": 2}


def synthetic_split(n: int, seed: int) -> Split:
    """n random uint8 images of CIFAR shape with random labels, as a resident split."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *INPUT_SHAPE), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return Split(x, y, torch.arange(n))


def _timed(fn, device: torch.device, label: str | None = None) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    if label is not None:
        print(f"  {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return seconds, out


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


# ------------------------------------------------------------------ the rbench side


def rbench_epoch(model, split, device, steps, *, precision, channels_last, compile):
    """One PGD-AT epoch over `split` through rbench's trainer."""
    loader = BatchLoader(split, BATCH_SIZE, shuffle=True, seed=0, augment="crop-flip")
    attack = PGD("Linf", EPS, STEP, steps)
    stats = {}
    fit(
        model,
        loader,
        attack=attack,
        meter=ComputeMeter(len(split), steps),
        epochs=1,
        lr=0.1,
        optimizer=sgd(model),
        schedule="constant",
        loss="adv",
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        on_epoch_end=lambda _, s: stats.update(s),
    )
    return stats


# ------------------------------------------------------------------ AutoAttack, both ways


def autoattack_direct(model, split: Split, device, version: str, batch_size: int) -> float:
    """pyautoattack called as its README shows, nothing in between."""
    from pyautoattack import AutoAttack

    model.eval()
    x, y = split.images(slice(None)).to(device), split.y.to(device)
    adversary = AutoAttack(model, device=device, eps=EPS, norm="Linf", seed=0, version=version)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return (y_adv == y).float().mean().item()


def autoattack_rbench(model, split: Split, device, version: str, batch_size: int) -> float:
    from rbench.evaluate.accuracy import autoattack_correct

    protocol = Protocol("speed", len(split), AttackSpec(10, 0.25), version, batch_size=batch_size)
    correct, _ = autoattack_correct(model, split, ThreatModel("Linf", "8/255"), protocol, device)
    return correct.float().mean().item()


# ------------------------------------------------------------------ the run


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rbench.perf.speed",
        description="rbench's PGD-AT epoch and AutoAttack path against plain PyTorch / pyautoattack.",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--arch", help="model (default: resnet18 on CUDA, smallcnn on CPU)")
    p.add_argument("--n-train", type=int, help="images in the training epoch (50000 / 512)")
    p.add_argument("--n-eval", type=int, help="AutoAttack points (1000 / 32)")
    p.add_argument("--steps", type=int, help="PGD steps of the training attack (10 / 2)")
    p.add_argument("--precision", default="auto", help="rbench's training precision (auto)")
    p.add_argument("--channels-last", default="auto", help="auto, off, inputs or model (auto)")
    p.add_argument("--compile", action="store_true", help="rbench trains through torch.compile")
    p.add_argument("--workers", type=int, help="textbook DataLoader workers (4 on CUDA, 0 on CPU)")
    p.add_argument("--aa-version", default="standard", help="pyautoattack version (standard)")
    p.add_argument("--aa-batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each AutoAttack path (2)")
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--out", help="results JSON (default bench-results/speed-<device>.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from rbench.core.config import resolve_device

    device = resolve_device(args.device)
    defaults = FULL if device.type == "cuda" else SMALL
    chosen = {k: getattr(args, k) for k in defaults}
    config = {k: defaults[k] if v is None else v for k, v in chosen.items()}
    mode = (
        ("full GPU configuration" if device.type == "cuda" else "small CPU configuration")
        if all(v is None for v in chosen.values())
        else "custom configuration"
    )
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    precision = resolve_precision(args.precision, device)
    channels_last = resolve_channels_last(args.channels_last, device)
    print(
        f"rbench speed: {mode} on {device_slug(device)} ({config['arch']}, "
        f"{config['n_train']} training images, PGD-{config['steps']}, "
        f"{config['n_eval']} AutoAttack points; rbench trains in {precision}, "
        f"channels-last {channels_last}{', compiled' if args.compile else ''})",
        file=sys.stderr,
        flush=True,
    )

    torch.manual_seed(0)
    init = build_model(config["arch"], INPUT_SHAPE, NUM_CLASSES, MEAN, STD)
    train = synthetic_split(config["n_train"], seed=1)
    test = synthetic_split(config["n_eval"], seed=2)
    steps = config["steps"]

    # rbench: the split lives on the device; warm-up batches (kernel selection, compilation)
    # first, ending with a batch of the epoch's last size so no compilation falls in the timing
    model = copy.deepcopy(init).to(device)
    resident = train.to(device)
    n_warm = BATCH_SIZE * max(0, args.warmup_batches - 1) + (len(train) % BATCH_SIZE or BATCH_SIZE)
    warm = resident.part(0, min(len(train), n_warm))
    settings = {"precision": precision, "channels_last": channels_last, "compile": args.compile}
    if args.warmup_batches > 0:
        rbench_epoch(model, warm, device, steps, **settings)
    rbench_s, rbench_stats = _timed(
        lambda: rbench_epoch(model, resident, device, steps, **settings), device, "rbench epoch"
    )

    rbench_fp32_s = None
    if (precision, channels_last) != ("fp32", "off"):  # the same trainer without the GPU settings
        plain = copy.deepcopy(init).to(device)
        fp32 = {"precision": "fp32", "channels_last": "off", "compile": False}
        if args.warmup_batches > 0:
            rbench_epoch(plain, warm, device, steps, **fp32)
        rbench_fp32_s, _ = _timed(
            lambda: rbench_epoch(plain, resident, device, steps, **fp32),
            device,
            "rbench fp32 epoch",
        )

    # the textbook loop on a copy of the same initial model
    reference = copy.deepcopy(init).to(device)
    optimizer = sgd(reference)
    loader = textbook_loader(train, device, workers)
    if args.warmup_batches > 0:
        textbook_epoch(reference, loader, optimizer, device, steps, args.warmup_batches)
    textbook_s, textbook_stats = _timed(
        lambda: textbook_epoch(reference, loader, optimizer, device, steps),
        device,
        "textbook epoch",
    )

    # AutoAttack on the rbench-trained model, both ways, in alternating order; the fastest of
    # each counts. Import first so neither side pays for it.
    import pyautoattack  # noqa: F401

    model.eval()
    aa = {"direct": [], "rbench": []}
    accuracy = {}
    paths = [("direct", autoattack_direct), ("rbench", autoattack_rbench)]
    for repeat in range(max(1, args.repeats)):
        for name, run in paths if repeat % 2 == 0 else paths[::-1]:
            seconds, acc = _timed(
                lambda run=run: run(model, test, device, args.aa_version, args.aa_batch_size),
                device,
                f"AutoAttack, {name}",
            )
            aa[name].append(seconds)
            accuracy[name] = acc
    direct_s, rbench_aa_s = min(aa["direct"]), min(aa["rbench"])

    n = config["n_train"]
    full_gpu = device.type == "cuda" and config == FULL
    speedup = textbook_s / rbench_s
    overhead = rbench_aa_s / direct_s - 1
    result = {
        "schema": "rbench-speed/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m rbench.perf.speed "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": mode,
        "environment": environment(device),
        "config": {
            **config,
            "input_shape": list(INPUT_SHAPE),
            "batch_size": BATCH_SIZE,
            "eps": "8/255",
            "step_size": "2/255",
            "precision": precision,
            "channels_last": channels_last,
            "compile": args.compile,
            "textbook_workers": workers,
            "aa_version": args.aa_version,
            "aa_repeats": max(1, args.repeats),
            "warmup_batches": args.warmup_batches,
        },
        "training": {
            "rbench_s": rbench_s,
            "textbook_s": textbook_s,
            "speedup": speedup,
            "rbench_images_per_s": n / rbench_s,
            "textbook_images_per_s": n / textbook_s,
            "rbench_fp32_s": rbench_fp32_s,
            "rbench_stats": rbench_stats,
            "textbook_stats": textbook_stats,
        },
        "autoattack": {
            "rbench_s": rbench_aa_s,
            "direct_s": direct_s,
            "overhead": overhead,
            "rbench_times_s": aa["rbench"],
            "direct_times_s": aa["direct"],
            "rbench_robust_accuracy": accuracy["rbench"],
            "direct_robust_accuracy": accuracy["direct"],
            "agree": accuracy["rbench"] == accuracy["direct"],
            "n_eval": config["n_eval"],
        },
        "targets": {
            **TARGETS,
            "applies": full_gpu,
            "met": {
                "pgd_epoch_speedup": speedup >= TARGETS["pgd_epoch_speedup_min"],
                "pgd_epoch_time": rbench_s <= TARGETS["pgd_epoch_max_s"],
                "autoattack_overhead": overhead <= TARGETS["autoattack_overhead_max"],
            }
            if full_gpu
            else None,
        },
    }
    out = Path(args.out or f"bench-results/speed-{device_slug(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(table(result))
    print(f"\nwritten to {out}")
    return result


def table(result: dict) -> str:
    t, a, c = result["training"], result["autoattack"], result["config"]
    env = result["environment"]
    lines = [
        f"device {env['device']}, torch {env['torch']}, pyautoattack {env['pyautoattack']}, "
        f"{env['threads']} threads; {result['mode']}",
        f"PGD-{c['steps']} AT epoch, {c['arch']}, {c['n_train']} images of 3x32x32, batch "
        f"{c['batch_size']}:",
        "| loop | seconds | images/s | speed-up |",
        "|---|---:|---:|---:|",
        f"| textbook PyTorch (host DataLoader, fp32) | {t['textbook_s']:.2f} | "
        f"{t['textbook_images_per_s']:.0f} | 1.00 |",
    ]
    if t["rbench_fp32_s"] is not None:
        lines.append(
            f"| rbench fp32, no channels-last | {t['rbench_fp32_s']:.2f} | "
            f"{c['n_train'] / t['rbench_fp32_s']:.0f} | {t['textbook_s'] / t['rbench_fp32_s']:.2f} |"
        )
    lines += [
        f"| rbench ({c['precision']}, channels-last {c['channels_last']}"
        f"{', compiled' if c['compile'] else ''}) | {t['rbench_s']:.2f} | "
        f"{t['rbench_images_per_s']:.0f} | {t['speedup']:.2f} |",
        "",
        f"AutoAttack {c['aa_version']}, {c['n_eval']} points (fastest of {c['aa_repeats']}):",
        "| path | seconds | robust accuracy |",
        "|---|---:|---:|",
        f"| pyautoattack directly | {a['direct_s']:.2f} | {a['direct_robust_accuracy']:.3f} |",
        f"| rbench.evaluate.accuracy | {a['rbench_s']:.2f} | {a['rbench_robust_accuracy']:.3f} |",
        f"overhead {a['overhead']:+.1%}; same robust accuracy: {a['agree']}",
    ]
    targets = result["targets"]
    if targets["applies"]:
        met = targets["met"]
        lines.append(
            f"targets: speed-up >= {targets['pgd_epoch_speedup_min']:g}x "
            f"{'met' if met['pgd_epoch_speedup'] else 'MISSED'}, epoch <= "
            f"{targets['pgd_epoch_max_s']:g} s {'met' if met['pgd_epoch_time'] else 'MISSED'}, "
            f"AutoAttack overhead <= {targets['autoattack_overhead_max']:.0%} "
            f"{'met' if met['autoattack_overhead'] else 'MISSED'}"
        )
    else:
        lines.append("targets (H100, full configuration) not judged on this configuration")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
