"""`rbench sweep`: one job per (method, ratio, seed) through submitit (its local executor on one
machine, Slurm on a cluster), all sharing one cache. A job that fails is reported and does not
stop the others; a rerun skips the jobs whose records already exist (the manifest says where)."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rbench.core.config import RunConfig, default_cache_dir
from rbench.core.errors import RbenchError
from rbench.core.registry import nondefault
from rbench.core.suites import Suite, get_suite, register_suite
from rbench.runner import Runner
from rbench.store.cache import atomic_write_json, content_hash
from rbench.store.records import ratio_label, record_folder, record_stem
from rbench.store.safejson import parse_data, read_data


@dataclass(frozen=True)
class Job:
    method: str
    ratio: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-r{ratio_label(self.ratio)}-s{self.seed}"


def run_job(cfg: RunConfig, suite: Suite | None = None, threads: int | None = None) -> dict:
    """What a worker runs: one complete rbench run. Returns where its record went. `suite` carries
    the parent's suite definition, so suites registered at run time (plugins, tests) work too;
    `threads` shares the CPU between the jobs running side by side."""
    if suite is not None:
        register_suite(suite)
    if threads:
        import torch

        torch.set_num_threads(threads)
    record = Runner(cfg).run()
    return {"record": record["_path"], "autoattack": record["metrics"]["autoattack"]["accuracy"]}


def manifest_path(base: RunConfig, jobs: list[Job]) -> Path:
    key = content_hash(
        {
            "base": asdict(replace(base, method="", ratio=1, seed=0)),
            "jobs": [asdict(j) for j in jobs],
        }
    )
    # beside the cache, not among the records: the leaderboard reads every JSON under its entries
    return Path(base.cache_dir or default_cache_dir()).expanduser() / "sweeps" / f"{key}.json"


def existing_record(base: RunConfig, job: Job) -> str | None:
    """A record of this job already in the results folder (same suite version, protocol, budget,
    no option overrides), so that a sweep resumes from the records themselves, on a machine whose
    cache never saw them."""
    suite = get_suite(base.suite)
    protocol = suite.protocol(base.protocol).name
    epochs = suite.compress_epochs if base.epochs is None else float(base.epochs)
    folder = record_folder(base.results_dir, suite.name, job.method)
    # the options the job would run with: none, or the tuned rate (--tuning)
    expected = nondefault(Runner(replace(base, method=job.method, ratio=job.ratio)).config)
    for path in sorted(folder.glob(f"{record_stem('harness', job.ratio, job.seed)}*.json")):
        try:
            r = parse_data(path.read_text(encoding="utf-8"))
            if (
                float(r["budget"]["ratio"]) == job.ratio
                and r["suite"]["version"] == suite.version
                and r["protocol"]["name"] == protocol
                and float(r["budget"]["epochs"]) == epochs
                and r["method"]["config_nondefault"] == expected
            ):
                return str(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: not a finished job
    return None


def _executor(kind: str, folder: Path, slurm: dict):
    import submitit

    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=slurm.get("timeout_min", 24 * 60))
    elif kind == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        executor.update_parameters(**slurm)
    elif kind == "debug":
        executor = submitit.DebugExecutor(folder=str(folder))
    else:
        raise RbenchError(f"unknown executor '{kind}' (choose local, slurm or debug)")
    return executor


def _failure(exc: BaseException) -> str:
    """The last meaningful line of a worker's error (submitit wraps the traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def sweep(
    base: RunConfig,
    methods: list[str],
    ratios: list[float],
    seeds: list[int],
    executor: str = "local",
    slurm: dict | None = None,
    say=print,
    max_parallel: int | None = None,
    poll_s: float = 1.0,
) -> dict[str, dict]:
    """Run the grid with at most `max_parallel` jobs at once (local default: one per CPU core,
    each given an equal share of the threads); returns {job name: {"status": "done"|"failed",
    ...}} and keeps a manifest. Jobs go seed by seed, so each dense model is trained once early."""
    jobs = [Job(m, float(r), int(s)) for s, m, r in itertools.product(seeds, methods, ratios)]
    for m in methods:  # every option of every job checked before anything is written
        Runner(replace(base, method=m, ratio=ratios[0], seed=seeds[0]))
    path = manifest_path(base, jobs)
    manifest = read_data(path, "the sweep manifest") if path.is_file() else {}
    before = dict(manifest)
    for j in jobs:
        done = manifest.get(j.name, {})
        if not (done.get("status") == "done" and Path(done["record"]).is_file()):
            if record := existing_record(base, j):
                manifest[j.name] = {"status": "done", "record": record, "autoattack": None}
            else:
                manifest.pop(j.name, None)
    todo = [j for j in jobs if manifest.get(j.name, {}).get("status") != "done"]
    say(
        f"sweep: {len(jobs)} jobs, {len(jobs) - len(todo)} already done, {len(todo)} to run "
        f"({executor} executor); manifest {path}"
    )
    if not todo:
        if manifest != before or not path.is_file():
            atomic_write_json(path, manifest)  # the manifest named above exists
        return {j.name: manifest[j.name] for j in jobs}
    logs = path.parent / f"{path.stem}-logs"
    ex = _executor(executor, logs, slurm or {})
    say(f"sweep: logs in {logs} (each job's <job id>_0_log.out and _0_log.err)")
    suite = get_suite(base.suite)
    cores = os.cpu_count() or 1
    if executor == "debug":
        max_parallel = 1  # the debug executor runs a job only when its result is asked for
    elif max_parallel is None:
        max_parallel = cores if executor == "local" else len(todo)
    threads = max(1, cores // max_parallel) if executor == "local" else None
    pending, running = list(todo), []
    counts = Counts(total=len(jobs), done=len(jobs) - len(todo))
    while pending or running:
        while pending and len(running) < max_parallel:
            j = pending.pop(0)
            cfg = replace(base, method=j.method, ratio=j.ratio, seed=j.seed)
            handle = ex.submit(run_job, cfg, suite, threads)
            running.append((j, handle))
            say(f"  start  {j.name}: job {handle.job_id}, log {_log_of(handle)}")
        counts.running, counts.waiting = len(running), len(pending)
        say_counts(counts, say)
        finished = [(j, h) for j, h in running if executor == "debug" or h.done()]
        if not finished:
            time.sleep(poll_s)
            continue
        for job, handle in finished:
            running.remove((job, handle))
            try:
                manifest[job.name] = {"status": "done", **handle.result()}
                counts.done += 1
                aa = manifest[job.name]["autoattack"]
                say(f"  done   {job.name}: AutoAttack {100 * aa:.1f}%")
            except Exception as exc:  # one failed job must not stop the others
                manifest[job.name] = {"status": "failed", "error": _failure(exc)}
                counts.failed += 1
                say(f"  FAILED {job.name}: {manifest[job.name]['error']} (log {_log_of(handle)})")
            atomic_write_json(path, manifest)
    counts.running = 0
    say_counts(counts, say)
    return {j.name: manifest[j.name] for j in jobs}


@dataclass
class Counts:
    """The sweep's live job counts; a line is printed whenever they change."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    waiting: int = 0
    shown: tuple = ()

    def line(self) -> str:
        return (
            f"sweep: {self.done}/{self.total} done, {self.running} running, "
            f"{self.failed} failed, {self.waiting} waiting"
        )


def say_counts(counts: Counts, say) -> None:
    now = (counts.done, counts.running, counts.failed, counts.waiting)
    if now != counts.shown:
        counts.shown = now
        say(counts.line())


def _log_of(handle) -> str:
    try:
        return str(handle.paths.stderr)
    except Exception:  # an executor without log files (debug)
        return "none"


def _items(text: str, option: str, example: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise RbenchError(f"{option} names nothing; give a comma-separated list, e.g. {example}")
    if "" in items:
        raise RbenchError(f"{option} '{text}' has an empty item")
    if len(set(items)) != len(items):
        raise RbenchError(f"{option} '{text}' names an item twice")
    return items


def parse_grid(methods: str, ratios: str, seeds: str, suite: str):
    """The CLI's comma-separated lists, each item checked by the run option's declaration
    (rbench.core.config.RunConfig) before anything is submitted or written."""
    from rbench.core.config import check_number_option
    from rbench.methods import get_method

    method_list = _items(methods, "--methods", "magnitude,cstar")
    for m in method_list:
        get_method(m)
    get_suite(suite)
    ratio_list, seed_list = [], []
    for text in _items(ratios, "--ratios", "4,16"):
        try:
            ratio_list.append(float(text))
        except ValueError:
            raise RbenchError(f"--ratios: '{text}' is not a number") from None
        check_number_option("ratio", ratio_list[-1], text)
    for text in _items(seeds, "--seeds", "0,1,2"):
        try:
            seed_list.append(int(text))
        except ValueError:
            raise RbenchError(f"--seeds: '{text}' is not an integer") from None
        check_number_option("seed", seed_list[-1], text)
    if len(set(ratio_list)) != len(ratio_list):
        raise RbenchError(f"--ratios '{ratios}' names a ratio twice")
    return method_list, ratio_list, seed_list
