"""The pipeline: dense model (cached) -> compress -> verify budget -> evaluate -> diagnose ->
record. Each stage is cached under a content hash of its inputs and skipped when its artifact
exists; dense training resumes from its last epoch checkpoint, evaluation from its last finished
attack. The record is written only after every stage succeeded, atomically."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from rbench.core.budget import Budget, ComputeMeter, measure_compression, verify_ratio
from rbench.core.config import (
    RunConfig,
    Stages,
    check_run_config,
    check_writable,
    default_cache_dir,
    resolve_device,
)
from rbench.core.errors import RbenchError
from rbench.core.progress import note
from rbench.core.registry import make_config
from rbench.core.suites import Suite, get_suite
from rbench.data.datasets import check_data_root, load_data
from rbench.data.models import build_model
from rbench.data.splits import DataSplits
from rbench.dense import checkpoint_state, dense_model
from rbench.evaluation import ShardDone, diagnose, evaluate
from rbench.layers import finalize, rebuild, structure_of
from rbench.methods import get_method
from rbench.perf.latency import measure_latency
from rbench.store import stage_keys as keys
from rbench.store.cache import CorruptArtifact, Store
from rbench.store.checkpoint import (
    load_model_tensors,
    model_tensors,
)
from rbench.store.records import build_record, record_path, validate_record, write_record
from rbench.store.tuning import read_tuning
from rbench.train.context import Context


class Runner:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        check_run_config(cfg)  # every option's declared range and the paths, before anything
        self.suite: Suite = get_suite(cfg.suite)
        check_data_root(self.suite.dataset, cfg.data_root)
        self.method_cls = get_method(cfg.method)
        self.tuning = None
        opts = dict(cfg.opts)
        if cfg.tuning is not None:
            self.tuning = read_tuning(cfg.tuning, self.suite, self.method_cls)
            if self.tuning is not None:
                overridden = set(self.tuning["fields"]) & set(opts)
                self.tuning["applied"] = not overridden
                if not overridden:
                    opts.update({f: repr(self.tuning["chosen"]) for f in self.tuning["fields"]})
        self.config = make_config(self.method_cls, opts)
        self.protocol = self.suite.protocol(cfg.protocol)
        self.device = resolve_device(cfg.device)
        self.store = Store(cfg.cache_dir or default_cache_dir())
        self.results_dir = Path(cfg.results_dir)
        check_writable(self.results_dir)
        check_writable(self.store.root)
        self.stages = Stages()
        self.latency: dict = {}
        self.checkpoint: tuple[dict, str] | None = None  # --dense-checkpoint, read by run()
        self.budget = Budget(
            ratio=float(cfg.ratio),
            epochs=self.suite.compress_epochs if cfg.epochs is None else float(cfg.epochs),
        )

    # -------------------------------------------------------------- helpers
    def say(self, message: str) -> None:
        if not self.cfg.quiet:
            note(message)  # rbench.core.progress: a line that does not break a live bar

    def warn(self, message: str) -> None:
        """A line shown even with --quiet: something the user should know happened (a corrupt
        cache entry found and recomputed)."""
        note(f"warning: {message}")

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
        # refuse an unusable checkpoint and an unreachable budget before any compute
        if self.cfg.dense_checkpoint:
            self.checkpoint = checkpoint_state(self)
        self.method_cls(self.config).check(self.new_model(), self.budget)
        data = self._timed("data", lambda: load_data(self.suite.dataset, self.cfg.data_root))
        on_device = DataSplits(
            data.info,
            data.train.to(self.device),
            data.val.to(self.device),
            data.test.to(self.device),
        )
        dense, self.dense_meta = self._timed("dense", lambda: dense_model(self, on_device))
        compressed, meta = self._timed("compress", lambda: self.compress(dense, on_device))
        self.compress_meta = meta
        compression = measure_compression(dense, compressed, self.suite.data.input_shape)
        verify_ratio(compression, self.budget.ratio, self.method_cls.name)
        self.latency = {  # batch-1 forward time; apart from `compression`, which is exact
            "dense": measure_latency(dense, self.suite.data.input_shape, self.device),
            "compressed": measure_latency(compressed, self.suite.data.input_shape, self.device),
        }
        try:
            metrics, flags = self._timed("evaluate", lambda: evaluate(self, compressed, on_device))
        except ShardDone as done:
            return {"_shard": f"{done.shard[0]}/{done.shard[1]}", "_ranges": done.ranges}
        diagnostics = self._timed("diagnose", lambda: diagnose(self, compressed, on_device))
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
        cfg = self.cfg
        return keys.dense_key(
            self.suite, cfg.seed, self.device, cfg.dense_checkpoint, cfg.input_normalization
        )

    def evaluate_key(self) -> str:
        return keys.evaluate_key(
            self.stages.keys["compress"], self.protocol, self.suite, self.cfg.seed
        )

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
                    self.warn(f"compress: cache entry unusable ({exc}); compressing again")
                    self.store.discard("compress", key)
            self.stages.cached["compress"] = False
            meter = ComputeMeter(
                len(data.train), self.suite.dense.attack.steps, limit_epochs=self.budget.epochs
            )
            ctx = Context(
                suite=self.suite,
                data=DataSplits(data.info, data.train, data.val, None),  # methods never see test
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
            if ctx.diverged:
                meta["diverged"] = "; ".join(ctx.diverged)
            meta = self.store.save("compress", key, meta, model_tensors(model))
        return model, meta


def run(cfg: RunConfig) -> dict:
    return Runner(cfg).run()
