"""The pipeline: dense model (cached) -> compress -> verify budget -> evaluate -> diagnose ->
record. Each stage is cached under a content hash of its inputs and skipped when its artifact
exists; dense training resumes from its last epoch checkpoint, evaluation from its last finished
attack. The record is written only after every stage succeeded, atomically."""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from rbench.core.budget import Budget, ComputeMeter, measure_compression, verify_ratio
from rbench.core.config import (
    RunConfig,
    Stages,
    check_ratio,
    check_writable,
    default_cache_dir,
    resolve_device,
)
from rbench.core.errors import RbenchError
from rbench.core.registry import make_config
from rbench.core.suites import Suite, get_suite
from rbench.data.datasets import load_data
from rbench.data.models import build_model
from rbench.data.splits import BatchLoader, DataSplits
from rbench.evaluate import accuracy as ev
from rbench.layers import finalize, rebuild, structure_of
from rbench.methods import get_method
from rbench.perf.latency import measure_latency
from rbench.store import stage_keys as keys
from rbench.store.cache import CorruptArtifact, Store, content_hash
from rbench.store.checkpoint import (
    load_model_tensors,
    load_state,
    model_tensors,
    optimizer_tensors,
    read_checkpoint,
    restore_optimizer,
    strip_model_prefix,
)
from rbench.store.records import build_record, record_path, validate_record, write_record
from rbench.train.context import Context
from rbench.train.trainer import fit_recipe, recipe_parts


class ShardDone(Exception):
    """Raised (and caught by `run`) when a `--shard i/n` run has finished its part."""

    def __init__(self, shard: tuple[int, int], ranges: list[tuple[int, int]]) -> None:
        super().__init__(f"shard {shard[0]}/{shard[1]}")
        self.shard, self.ranges = shard, ranges


class Runner:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        check_ratio(cfg.ratio)
        if not 0 <= cfg.seed < 2**31:
            raise RbenchError(f"--seed must be between 0 and 2^31-1, got {cfg.seed}")
        if cfg.shard is not None and not (cfg.shard[1] >= 1 and 0 <= cfg.shard[0] < cfg.shard[1]):
            raise RbenchError(
                f"--shard must be i/n with 0 <= i < n, got {cfg.shard[0]}/{cfg.shard[1]}"
            )
        if cfg.epochs is not None and not (math.isfinite(cfg.epochs) and cfg.epochs >= 0):
            raise RbenchError(f"--epochs must be a finite number >= 0, got {cfg.epochs}")
        self.suite: Suite = get_suite(cfg.suite)
        self.method_cls = get_method(cfg.method)
        self.config = make_config(self.method_cls, dict(cfg.opts))
        self.protocol = self.suite.protocol(cfg.protocol)
        self.device = resolve_device(cfg.device)
        self.store = Store(cfg.cache_dir or default_cache_dir())
        self.results_dir = Path(cfg.results_dir)
        check_writable(self.results_dir)
        check_writable(self.store.root)
        self.stages = Stages()
        self.latency: dict = {}
        self.budget = Budget(
            ratio=float(cfg.ratio),
            epochs=self.suite.compress_epochs if cfg.epochs is None else float(cfg.epochs),
        )

    # -------------------------------------------------------------- helpers
    def say(self, message: str) -> None:
        if not self.cfg.quiet:
            print(message, file=sys.stderr, flush=True)

    def new_model(self) -> nn.Module:
        info = self.suite.data
        return build_model(self.suite.arch, info.input_shape, info.num_classes, info.mean, info.std)

    def _timed(self, stage: str, fn):
        start = time.perf_counter()
        out = fn()
        self.stages.timings[stage] = round(time.perf_counter() - start, 3)
        return out

    # -------------------------------------------------------------- stages
    def run(self) -> dict:
        # refuse an unreachable budget before spending any compute on it
        self.method_cls(self.config).check(self.new_model(), self.budget)
        data = self._timed("data", lambda: load_data(self.suite.dataset, self.cfg.data_root))
        on_device = DataSplits(
            data.info,
            data.train.to(self.device),
            data.val.to(self.device),
            data.test.to(self.device),
        )
        dense = self._timed("dense", lambda: self.dense_model(on_device))
        compressed, meta = self._timed("compress", lambda: self.compress(dense, on_device))
        compression = measure_compression(dense, compressed, self.suite.data.input_shape)
        verify_ratio(compression, self.budget.ratio, self.method_cls.name)
        self.latency = {  # batch-1 forward time; apart from `compression`, which is exact
            "dense": measure_latency(dense, self.suite.data.input_shape, self.device),
            "compressed": measure_latency(compressed, self.suite.data.input_shape, self.device),
        }
        try:
            metrics, flags = self._timed("evaluate", lambda: self.evaluate(compressed, on_device))
        except ShardDone as done:
            return {"_shard": f"{done.shard[0]}/{done.shard[1]}", "_ranges": done.ranges}
        diagnostics = self._timed("diagnose", lambda: self.diagnose(compressed, on_device))
        record = build_record(
            runner=self,
            compression=compression,
            compress_meta=meta,
            metrics=metrics,
            flags=flags,
            diagnostics=diagnostics,
            data=data,
        )
        validate_record(record)
        path = record_path(self.results_dir, record)
        write_record(path, record)
        record["_path"] = str(path)
        return record

    def dense_key(self) -> str:
        return keys.dense_key(self.suite, self.cfg.seed, self.device, self.cfg.dense_checkpoint)

    def dense_model(self, data: DataSplits) -> nn.Module:
        """The suite's adversarially trained dense model: from the cache, from the user's
        checkpoint, or trained now (resuming from the last finished epoch)."""
        if self.cfg.dense_checkpoint:
            read_checkpoint(self.cfg.dense_checkpoint)  # clear error before hashing a bad path
        key = self.stages.keys["dense"] = self.dense_key()
        model = self.new_model()
        with self.store.lock("dense", key):
            if self.store.has("dense", key):
                try:
                    _, tensors = self.store.load("dense", key)
                    load_model_tensors(model, tensors, "the cached dense model")
                    self.stages.cached["dense"] = True
                    self.say(
                        f"dense model: reusing the cached one ({self.store.dir('dense', key)})"
                    )
                    return model.to(self.device).eval()
                except CorruptArtifact as exc:
                    self.say(f"dense model: cache entry is corrupt ({exc}); training it again")
                    self.store.discard("dense", key)
            self.stages.cached["dense"] = False
            if self.cfg.dense_checkpoint:
                state = read_checkpoint(self.cfg.dense_checkpoint)
                load_state(
                    model,
                    strip_model_prefix(state, model),
                    f"checkpoint '{self.cfg.dense_checkpoint}'",
                )
                meta = {"source": "checkpoint", "path": str(self.cfg.dense_checkpoint)}
            else:
                meta = self._train_dense(model, data, key)
            self.store.save("dense", key, meta, model_tensors(model))
        return model.to(self.device).eval()

    def _train_dense(self, model: nn.Module, data: DataSplits, key: str) -> dict:
        recipe, s = self.suite.dense, self.suite
        torch.manual_seed(self.cfg.seed)
        model = model.to(self.device)
        # re-initialise from the seed so the init does not depend on what ran before
        model.load_state_dict(self.new_model().state_dict())
        loader = BatchLoader(
            data.train, recipe.batch_size, shuffle=True, seed=self.cfg.seed, augment=recipe.augment
        )
        attack, meter, optimizer = recipe_parts(model, recipe, s.threat, len(data.train))
        partial = f"{key}-partial"
        start = 0
        if self.store.has("dense", partial):
            try:
                pmeta, tensors = self.store.load("dense", partial)
                load_model_tensors(model, tensors, "the dense training checkpoint")
                restore_optimizer(optimizer, tensors, pmeta["optimizer"])
                start, meter.passes = pmeta["epoch"] + 1, pmeta["passes"]
                self.say(f"dense model: resuming training at epoch {start + 1}/{recipe.epochs}")
            except (CorruptArtifact, RbenchError, KeyError, ValueError) as exc:
                self.say(f"dense model: ignoring an unusable training checkpoint ({exc})")
                start = 0
        if start == 0:
            self.say(
                f"dense model: adversarial training, {recipe.epochs} epochs "
                f"(PGD-{attack.steps}, {s.threat})"
            )

        def checkpoint(epoch: int, stats: dict) -> None:
            tensors, ometa = optimizer_tensors(optimizer)
            self.store.save(
                "dense",
                partial,
                {"epoch": epoch, "passes": meter.passes, "optimizer": ometa},
                {**model_tensors(model), **tensors},
            )
            self.say(
                f"  dense epoch {epoch + 1}/{recipe.epochs}: loss {stats['loss']:.3f}, "
                f"adversarial train acc {stats['accuracy']:.3f}"
            )

        fit_recipe(
            model,
            loader,
            recipe,
            attack=attack,
            meter=meter,
            optimizer=optimizer,
            seed=self.cfg.seed,
            on_epoch_end=checkpoint,
            bar=None if self.cfg.quiet else "dense adversarial training",
            start_epoch=start,
        )
        self.store.discard("dense", partial)
        return {"source": "trained", "epochs": recipe.epochs, "compute_epochs": meter.used_epochs}

    def compress_key(self) -> str:
        return keys.compress_key(
            self.stages.keys["dense"],
            self.method_cls,
            self.config,
            self.suite,
            self.budget,
            self.cfg.seed,
        )

    def compress(self, dense: nn.Module, data: DataSplits) -> tuple[nn.Module, dict]:
        key = self.stages.keys["compress"] = self.compress_key()
        with self.store.lock("compress", key):
            if self.store.has("compress", key):
                try:
                    meta, tensors = self.store.load("compress", key)
                    model = rebuild(self.new_model(), meta["structure"])
                    load_model_tensors(model, tensors, "the cached compressed model")
                    self.stages.cached["compress"] = True
                    self.say(f"compress: reusing the cached result of '{self.method_cls.name}'")
                    return model.to(self.device).eval(), meta
                except (CorruptArtifact, RbenchError) as exc:
                    self.say(f"compress: cache entry unusable ({exc}); compressing again")
                    self.store.discard("compress", key)
            self.stages.cached["compress"] = False
            meter = ComputeMeter(
                len(data.train), self.suite.dense.attack.steps, limit_epochs=self.budget.epochs
            )
            ctx = Context(
                suite=self.suite,
                data=data,
                device=self.device,
                seed=self.cfg.seed,
                budget=self.budget,
                meter=meter,
                quiet=self.cfg.quiet,
            )
            self.say(
                f"compress: {self.method_cls.name} to ratio {self.budget.ratio:g} "
                f"within {self.budget.epochs:g} AT-epochs"
            )
            torch.manual_seed(self.cfg.seed)
            method = self.method_cls(self.config)
            result = method.compress(copy.deepcopy(dense), self.budget, ctx)
            if not isinstance(result, nn.Module):
                raise RbenchError(
                    f"method '{self.method_cls.name}' returned "
                    f"{type(result).__name__}, not a torch module"
                )
            model = finalize(result).to(self.device).eval()
            meta = {
                "structure": structure_of(model),
                "compute_epochs": meter.used_epochs,
                "method_report": ctx.report,
            }
            meta = self.store.save("compress", key, meta, model_tensors(model))
        return model, meta

    def evaluate_key(self) -> str:
        return keys.evaluate_key(
            self.stages.keys["compress"], self.protocol, self.suite, self.cfg.seed
        )

    def _cached_attack(self, name: str, compute):
        """One attack's per-point result, cached on its own so a killed evaluation resumes."""
        key = f"{self.stages.keys['evaluate']}-{name}"
        if self.store.has("evaluate", key):
            try:
                meta, tensors = self.store.load("evaluate", key)
                return tensors["correct"].bool(), meta.get("flags", {})
            except (CorruptArtifact, KeyError):
                self.store.discard("evaluate", key)
        self.say(f"evaluate: {name}")
        correct, flags = compute()
        self.store.save("evaluate", key, {"flags": flags}, {"correct": correct.to(torch.uint8)})
        return correct, flags

    def _autoattack(self, model: nn.Module, points) -> tuple[torch.Tensor, dict]:
        """AutoAttack in fixed chunks of the protocol's batch size, one pyautoattack call per chunk
        with the protocol's seed: each chunk is cached on its own (a killed evaluation loses at
        most one chunk) and `--shard i/n` computes every n-th chunk, so merged shards equal the
        unsharded result exactly."""
        chunks = ev.chunk_ranges(len(points), self.protocol.batch_size)
        mine = range(len(chunks))
        if self.cfg.shard is not None:
            index, count = self.cfg.shard
            mine = [c for c in mine if c % count == index]
        results, flags = {}, {}
        for c in mine:
            start, stop = chunks[c]
            part = points.part(start, stop)
            results[c], chunk_flags = self._cached_attack(
                f"autoattack-{start}-{stop}",
                lambda part=part: ev.autoattack_correct(
                    model, part, self.suite.threat, self.protocol, self.device, self.cfg.seed
                ),
            )
            flags.update(chunk_flags)
        if self.cfg.shard is not None:
            raise ShardDone(self.cfg.shard, [chunks[c] for c in mine])
        return torch.cat([results[c] for c in range(len(chunks))]), flags

    def evaluate(self, model: nn.Module, data: DataSplits) -> tuple[dict, dict]:
        self.stages.keys["evaluate"] = self.evaluate_key()
        threat, protocol = self.suite.threat, self.protocol
        device, seed = self.device, self.cfg.seed
        points = data.test.head(protocol.n_eval)
        clean, _ = self._cached_attack(
            "clean", lambda: (ev.clean_correct(model, data.test, device), {})
        )
        pgd, _ = self._cached_attack(
            "pgd", lambda: (ev.pgd_correct(model, points, threat, protocol.pgd, device, seed), {})
        )
        aa, aa_flags = self._autoattack(model, points)
        metrics_native = {}
        if self.method_cls.native_metrics:
            from rbench.evaluate.native import native_metrics

            metrics_native = native_metrics(
                model, points, self.method_cls.native_metrics, threat, device, seed
            )
        sweep = ev.eps_monotonicity(model, points.head(100), threat, device, seed)
        clean_points = clean[: len(points)].float().mean().item()
        flags = {
            **aa_flags,
            **ev.sanity_flags(
                clean_points, pgd.float().mean().item(), aa.float().mean().item(), sweep
            ),
        }
        metrics = {
            "clean": ev.accuracy_entry(clean, split="test"),
            "clean_eval_points": ev.accuracy_entry(clean[: len(points)]),
            "pgd": ev.accuracy_entry(
                pgd,
                steps=protocol.pgd.steps,
                restarts=protocol.pgd.restarts,
                step_size=protocol.pgd.step_fraction * threat.eps_value,
            ),
            "autoattack": ev.accuracy_entry(
                aa, version=protocol.autoattack, attacks=list(protocol.attacks)
            ),
            "eps_sweep_pgd10": sweep,
            "native": metrics_native,
            "eval_ids": {
                "split": "test",
                "first": len(points),
                "ids_sha256": content_hash(points.ids.cpu().tolist(), 64),
            },
        }
        return metrics, flags

    def diagnose(self, model: nn.Module, data: DataSplits | None = None) -> dict:
        """Spectral diagnostics; the local Lipschitz estimate uses the first 100 of the points
        the robust accuracy is measured on."""
        from rbench.evaluate.spectral import diagnose

        x = None
        if data is not None:
            x = data.test.head(self.protocol.n_eval).head(100).images(slice(None))
        return diagnose(model, self.suite.data.input_shape, x)


def run(cfg: RunConfig) -> dict:
    return Runner(cfg).run()
