"""The evaluation stage of a run: clean, PGD, AutoAttack and the security curve of the compressed
model, each attack's per-point result cached on its own so that a killed evaluation resumes.

Robust accuracy is measured on the first `n_eval` test points (their ids are hashed into the
record) and counts a point only when it is also classified correctly without attack. The record
keeps, besides the counts, which of those points were correct under each attack (rbench.store.
points), so entries evaluated on the same points can be compared point by point.
"""

from __future__ import annotations

import torch
from torch import nn

from rbench.core import progress as show
from rbench.data.splits import DataSplits
from rbench.evaluate import accuracy as ev
from rbench.evaluate.curves import above_autoattack, curve_entry, minimal_perturbations
from rbench.store.cache import CorruptArtifact, content_hash
from rbench.store.points import points_entry

COLLAPSE = 1.5  # clean accuracy below this multiple of chance: the model no longer classifies


class ShardDone(Exception):
    """Raised (and caught by `run`) when a `--shard i/n` run has finished its part."""

    def __init__(self, shard: tuple[int, int], ranges: list[tuple[int, int]]) -> None:
        super().__init__(f"shard {shard[0]}/{shard[1]}")
        self.shard, self.ranges = shard, ranges


def cached_attack(runner, name: str, compute, dtype=torch.uint8, points: int | None = None):
    """One attack's per-point result, cached on its own so a killed evaluation resumes. With
    `points`, `compute` takes a progress callback (points attacked, robust so far) and a bar
    shows them (rbench.core.progress: on a terminal, not under -q)."""
    key = f"{runner.stages.keys['evaluate']}-{name}"
    if runner.store.has("evaluate", key):
        try:
            meta, tensors = runner.store.load("evaluate", key)
            value = tensors["correct"]
            return (value.bool() if dtype == torch.uint8 else value), meta.get("flags", {})
        except (CorruptArtifact, KeyError):
            runner.warn(f"evaluate: cached '{name}' result is corrupt; computing it again")
            runner.store.discard("evaluate", key)
    runner.say(f"evaluate: {name}")
    if points is None:
        result, flags = compute()
    else:
        with show.bar(f"evaluate: {name}", points, unit="pt", quiet=runner.cfg.quiet) as bar:
            result, flags = compute(show.points_reporter(bar))
    runner.store.save("evaluate", key, {"flags": flags}, {"correct": result.to(dtype)})
    return result, flags


def autoattack(runner, model: nn.Module, points) -> tuple[torch.Tensor, dict]:
    """AutoAttack in fixed chunks of the protocol's batch size, one pyautoattack call per chunk
    with the protocol's seed: each chunk is cached on its own (a killed evaluation loses at most
    one chunk) and `--shard i/n` computes every n-th chunk, so merged shards equal the unsharded
    result exactly."""
    protocol, cfg = runner.protocol, runner.cfg
    chunks = ev.chunk_ranges(len(points), protocol.batch_size)
    mine = range(len(chunks))
    if cfg.shard is not None:
        index, count = cfg.shard
        mine = [c for c in mine if c % count == index]
    results, flags = {}, []
    total = sum(chunks[c][1] - chunks[c][0] for c in mine)
    with show.bar(f"AutoAttack ({protocol.name})", total, unit="pt", quiet=cfg.quiet) as bar:
        report, done, robust = show.points_reporter(bar), 0, 0
        for c in mine:
            start, stop = chunks[c]
            part = points.part(start, stop)
            results[c], chunk_flags = cached_attack(
                runner,
                f"autoattack-{start}-{stop}",
                lambda part=part: ev.autoattack_correct(
                    model, part, runner.suite.threat, protocol, runner.device, cfg.seed
                ),
            )
            flags.append(chunk_flags)
            done, robust = done + stop - start, robust + int(results[c].sum())
            report(done, robust)  # per chunk: points attacked so far, robust so far
    if cfg.shard is not None:
        raise ShardDone(cfg.shard, [chunks[c] for c in mine])
    return torch.cat([results[c] for c in range(len(chunks))]), ev.merge_autoattack_flags(
        flags, len(points)
    )


def outcome_flags(clean: float, classes: int) -> dict[str, str]:
    """A model at chance is a real result, but a reader must see it in the record itself."""
    if clean < COLLAPSE / classes:
        return {
            "collapsed": f"clean accuracy {clean:.3f} is below {COLLAPSE:g} x chance "
            f"({1 / classes:.3f}): the model no longer classifies"
        }
    return {}


def evaluate(runner, model: nn.Module, data: DataSplits) -> tuple[dict, dict]:
    runner.stages.keys["evaluate"] = runner.evaluate_key()
    threat, protocol = runner.suite.threat, runner.protocol
    device, seed = runner.device, runner.cfg.seed
    points = data.test.head(protocol.n_eval)
    n = len(points)
    clean, _ = cached_attack(
        runner, "clean", lambda: (ev.clean_correct(model, data.test, device), {})
    )
    pgd, _ = cached_attack(
        runner,
        "pgd",
        lambda bar: (
            ev.pgd_correct(model, points, threat, protocol.pgd, device, seed, progress=bar),
            {},
        ),
        points=n,
    )
    pgd_margin, _ = cached_attack(
        runner,
        "pgd-margin",
        lambda bar: (
            ev.pgd_correct(
                model, points, threat, protocol.pgd, device, seed, loss="margin", progress=bar
            ),
            {},
        ),
        points=n,
    )
    aa, aa_flags = autoattack(runner, model, points)
    clean_points = clean[:n]
    aa = aa & clean_points  # robust only where also correct without attack (pyautoattack agrees)
    norms, _ = cached_attack(
        runner,
        "fmn",
        lambda bar: (minimal_perturbations(model, points, threat, device, progress=bar), {}),
        dtype=torch.float32,
        points=n,
    )
    curve = curve_entry(norms, threat)
    metrics_native = {}
    if runner.method_cls.native_metrics:
        from rbench.evaluate.native import native_metrics

        metrics_native = native_metrics(
            model, points, runner.method_cls.native_metrics, threat, device, seed
        )
    sweep = ev.eps_monotonicity(model, points.head(100), threat, device, seed)
    acc = {
        k: v.float().mean().item() for k, v in (("clean", clean_points), ("pgd", pgd), ("aa", aa))
    }
    flags = {**aa_flags, **ev.sanity_flags(acc["clean"], acc["pgd"], acc["aa"], sweep)}
    flags.update(ev.masking_flags(pgd, pgd_margin, aa, sweep))
    if message := above_autoattack(norms, aa, threat.eps_value):
        flags["security_curve_above_autoattack"] = message
    flags.update(outcome_flags(clean.float().mean().item(), runner.suite.data.num_classes))
    if divergence := runner.compress_meta.get("diverged"):
        flags["diverged"] = divergence
    metrics = {
        "clean": ev.accuracy_entry(clean, split="test"),
        "clean_eval_points": ev.accuracy_entry(clean_points),
        "pgd": ev.accuracy_entry(
            pgd,
            steps=protocol.pgd.steps,
            restarts=protocol.pgd.restarts,
            step_size=protocol.pgd.step_fraction * threat.eps_value,
        ),
        "pgd_margin": ev.accuracy_entry(pgd_margin, loss="margin", steps=protocol.pgd.steps),
        "autoattack": ev.accuracy_entry(
            aa, version=protocol.autoattack, attacks=attack_names(protocol)
        ),
        "points": points_entry(n, {"clean": clean_points, "pgd": pgd, "autoattack": aa}),
        "security_curve": curve,
        "eps_sweep_pgd10": sweep,
        "native": metrics_native,
        "eval_ids": {
            "split": "test",
            "first": n,
            "ids_sha256": content_hash(points.ids.cpu().tolist(), 64),
        },
    }
    return metrics, flags


# the attacks of pyautoattack's fixed versions (AutoAttack._set_version)
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


def attack_names(protocol) -> list[str]:
    """The attacks AutoAttack ran: the protocol's list, or the standard version's four."""
    if protocol.attacks:
        return list(protocol.attacks)
    return list(VERSION_ATTACKS.get(protocol.autoattack, ()))


def diagnose(runner, model: nn.Module, data: DataSplits | None = None) -> dict:
    """Spectral diagnostics; the local Lipschitz estimate uses the first 100 of the points
    the robust accuracy is measured on."""
    from rbench.evaluate.spectral import diagnose as spectral_diagnose

    x = None
    if data is not None:
        x = data.test.head(runner.protocol.n_eval).head(100).images(slice(None))
    return spectral_diagnose(model, runner.suite.data.input_shape, x)
