"""`rbench run` and `rbench sweep`: compress a dense model and evaluate it, once or over a grid."""

from __future__ import annotations

import json

import click

from rbench.core.config import RunConfig, parse_opts, parse_shard
from rbench.core.errors import RbenchError
from rbench.core.suites import DEFAULT_SUITE
from rbench.report.tables import result_table


class Typed(click.ParamType):
    """A float that keeps the text it was typed as: (value, text), so that a record can say
    exactly what was asked for (`--ratio 16.0000001` is not `--ratio 16`)."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return click.FLOAT.convert(value, param, ctx), str(value).strip()


@click.command()
@click.option(
    "--method", "-m", required=True, help="Compression method (see `rbench list methods`)."
)
@click.option(
    "--ratio",
    "-r",
    required=True,
    type=Typed(),
    help="Target compression ratio N_dense / N_stored, >= 1 (e.g. 16); recorded as typed.",
)
@click.option(
    "--suite",
    "-s",
    default=DEFAULT_SUITE,
    show_default=True,
    help="Dataset + architecture + threat model + protocol (see `rbench list suites`).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of dense training, "
    "compression and attacks; the same seed gives the same numbers on a CPU.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to run.",
)
@click.option(
    "--data-root",
    type=str,
    default=None,
    help="Folder with the suite's dataset (not needed for the embedded suites).",
)
@click.option(
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a method hyperparameter; repeatable (e.g. --opt lr=0.005).",
)
@click.option(
    "--protocol",
    default=None,
    help="Evaluation protocol of the suite (default: the suite's; e.g. standard, quick).",
)
@click.option(
    "--epochs",
    type=float,
    default=None,
    help="Compression compute budget in AT-epochs (default: the suite's).",
)
@click.option(
    "--dense-checkpoint",
    type=str,
    default=None,
    help="Use this dense model instead of training one: .safetensors or a state dict, also a "
    "RobustBench-style file ({'state_dict': ...}, module. prefixes, RobustBench's WideResNet "
    "names) or a timm state dict for a timm:<name> suite.",
)
@click.option(
    "--input-normalization",
    type=click.Choice(["none", "suite"]),
    default=None,
    help="What the --dense-checkpoint's network expects: 'none' (it was trained on [0, 1] "
    "pixels) or 'suite' (on pixels normalised by the suite's mean and std). Default: what the "
    "checkpoint says (rbench's own files carry their normalisation); a bare network needs it.",
)
@click.option(
    "--results-dir", default="results", show_default=True, help="Where the JSON record is written."
)
@click.option(
    "--cache-dir", default=None, help="Artifact cache (default: $RBENCH_CACHE or ~/.cache/rbench)."
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the result row.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the record as one JSON document on stdout and nothing else (progress: stderr).",
)
@click.option(
    "--tuning",
    default=None,
    metavar="DIR",
    help="Apply the fine-tuning rate `rbench tune` chose (DIR/<suite>/<method>.json), "
    "e.g. leaderboard/tuning.",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Compute only AutoAttack chunk I of every N (e.g. 0/4) into the shared cache; "
    "a run without --shard then merges the shards exactly and writes the record.",
)
def run(
    method,
    ratio,
    suite,
    seed,
    device,
    data_root,
    opts,
    protocol,
    epochs,
    dense_checkpoint,
    input_normalization,
    results_dir,
    cache_dir,
    quiet,
    as_json,
    tuning,
    shard,
) -> None:
    """Compress a suite's dense model with METHOD at RATIO and evaluate it."""
    from rbench import api

    record = api.run(  # the Python API's code path (rbench.api)
        method=method,
        ratio=ratio[0],
        ratio_requested=ratio[1],
        input_normalization=input_normalization,
        suite=suite,
        seed=seed,
        device=device,
        data_root=data_root,
        opts=parse_opts(opts),
        protocol=protocol,
        epochs=epochs,
        dense_checkpoint=dense_checkpoint,
        results_dir=results_dir,
        cache_dir=cache_dir,
        quiet=quiet,
        shard=parse_shard(shard),
        tuning=tuning,
    )
    if as_json:  # one JSON document on stdout: the record as written, plus its _path
        click.echo(json.dumps(record, indent=2))
        return
    if "_shard" in record:
        done = ", ".join(f"{a}-{b}" for a, b in record["_ranges"]) or "none"
        click.echo(
            f"shard {record['_shard']} done (AutoAttack points {done}); run the other "
            "shards, then the same command without --shard to merge and write the record"
        )
        return
    click.echo(result_table([record]))
    flags = record["flags"]
    if flags:
        click.echo("flags: " + "; ".join(f"{k}: {v}" for k, v in flags.items()))
    outcome = [k for k in ("collapsed", "diverged") if k in flags]
    if outcome:  # a real result, so exit code 0, but one line a reader cannot miss
        click.echo(
            f"warning: this run {' and '.join(outcome)}; its record says so and the leaderboard "
            "marks it",
            err=True,
        )
    click.echo(f"record: {record['_path']}")


@click.command()
@click.option("--method", "-m", required=True, help="Method whose fine-tuning rate to choose.")
@click.option("--suite", "-s", default=DEFAULT_SUITE, show_default=True)
@click.option(
    "--ratio", "-r", default="16", show_default=True, type=Typed(), help="Ratio tuned at."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed tuned at.")
@click.option(
    "--multiples",
    default="0.2,0.4,1,2",
    show_default=True,
    help="The grid: multiples of the method's default rate.",
)
@click.option(
    "--out", default="leaderboard/tuning", show_default=True, help="Folder of tuning records."
)
@click.option("--epochs", type=float, default=None, help="Compute budget (default: the suite's).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--data-root", default=None)
@click.option("--cache-dir", default=None)
@click.option("--quiet", "-q", is_flag=True)
@click.option("--force", is_flag=True, help="Search again even if a tuning record exists.")
def tune(
    method, suite, ratio, seed, multiples, out, epochs, device, data_root, cache_dir, quiet, force
):
    """Choose METHOD's fine-tuning rate by the declared rule, on the validation split."""
    from pathlib import Path

    from rbench.tune import tune as run_tune

    try:
        grid = tuple(float(m) for m in multiples.split(","))
    except ValueError:
        raise RbenchError(f"--multiples takes comma-separated numbers, got '{multiples}'") from None
    if not grid or not all(0 < m < 1e3 for m in grid):
        raise RbenchError("--multiples must be positive numbers below 1000")
    if len(set(grid)) != len(grid):
        raise RbenchError(f"--multiples names a value twice: '{multiples}'")
    if Path(out).exists() and not Path(out).is_dir():
        raise RbenchError(f"--out '{out}' is a file, not a folder of tuning records")
    base = RunConfig(
        method=method,
        ratio=ratio[0],
        ratio_requested=ratio[1],
        suite=suite,
        seed=seed,
        device=device,
        data_root=data_root,
        epochs=epochs,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    record = run_tune(base, out, grid, say=say, force=force)
    rows = ", ".join(f"{p['value']:g}: {100 * p['val_pgd']:.1f}%" for p in record["grid"])
    click.echo(f"{method}: chose {record['chosen']:g} (validation PGD {rows})")


@click.command()
@click.option("--methods", required=True, help="Comma-separated methods, e.g. magnitude,cstar.")
@click.option("--ratios", required=True, help="Comma-separated ratios, e.g. 2,4,8,16,32.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--suite", "-s", default=DEFAULT_SUITE, show_default=True)
@click.option(
    "--executor",
    default="local",
    show_default=True,
    type=click.Choice(["local", "slurm", "debug"]),
    help="submitit executor: local processes, Slurm jobs, or in-process (debug).",
)
@click.option("--protocol", default=None, help="Evaluation protocol (default: the suite's).")
@click.option("--epochs", type=float, default=None, help="Compute budget (default: the suite's).")
@click.option("--tuning", default=None, metavar="DIR", help="Apply `rbench tune`'s choices.")
@click.option("--data-root", default=None)
@click.option("--results-dir", default="results", show_default=True)
@click.option("--cache-dir", default=None)
@click.option("--slurm-partition", default=None, help="Slurm partition (with --executor slurm).")
@click.option("--slurm-gpus", default=1, show_default=True, type=click.IntRange(0, 64))
@click.option(
    "--slurm-timeout-min", default=24 * 60, show_default=True, type=click.IntRange(1, 10**6)
)
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs running at once (default: one per CPU core locally, all on Slurm).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print every job's outcome as one JSON document on stdout (progress: stderr).",
)
def sweep(
    methods,
    ratios,
    seeds,
    suite,
    executor,
    protocol,
    epochs,
    tuning,
    data_root,
    results_dir,
    cache_dir,
    slurm_partition,
    slurm_gpus,
    slurm_timeout_min,
    max_parallel,
    as_json,
) -> None:
    """Run every (method, ratio, seed) as its own job, sharing one cache; rerun to resume."""
    from rbench import api
    from rbench.sweep import parse_grid

    method_list, ratio_list, seed_list = parse_grid(methods, ratios, seeds, suite)
    if executor != "slurm" and slurm_partition is not None:
        raise RbenchError("--slurm-partition applies only with --executor slurm")
    slurm = {"timeout_min": slurm_timeout_min}
    if executor == "slurm":
        slurm.update(slurm_partition=slurm_partition, gpus_per_node=slurm_gpus)
    results = api.sweep(  # the Python API's code path (rbench.api)
        method_list,
        ratio_list,
        seed_list,
        suite,
        executor=executor,
        slurm=slurm,
        say=lambda m: click.echo(m, err=True),
        max_parallel=max_parallel,
        protocol=protocol,
        epochs=epochs,
        tuning=tuning,
        data_root=data_root,
        results_dir=results_dir,
        cache_dir=cache_dir,
    )
    failed = [name for name, r in results.items() if r["status"] != "done"]
    if as_json:
        done = len(results) - len(failed)
        click.echo(json.dumps({"done": done, "failed": len(failed), "jobs": results}, indent=2))
    else:
        click.echo(f"{len(results) - len(failed)} done, {len(failed)} failed")
    if failed:
        raise SystemExit(1)
