"""The `rbench` command line: parse, call, print. Every user error is one line and exit code 2."""

from __future__ import annotations

import sys

import click
from tabulate import tabulate

from rbench import __version__
from rbench.config import RunConfig, parse_opts, parse_shard
from rbench.errors import RbenchError
from rbench.suites import DEFAULT_SUITE
from rbench.tables import (
    checkpoint_diagnostics,
    diagnostics_table,
    methods_table,
    record_diagnostics,
    result_table,
    suites_table,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rbench")
def cli() -> None:
    """rbench: benchmark robust model compression.

    Takes an adversarially trained dense model, compresses it with a registered method at a
    requested ratio and compute budget, then measures clean, PGD and AutoAttack accuracy and the
    weights' spectra, and stores one JSON record per run.

    \b
    First run (no download, CPU, a few minutes):
        rbench run --method magnitude --ratio 16
    See what exists:
        rbench list methods
        rbench list suites
    """


@cli.command()
@click.option(
    "--method", "-m", required=True, help="Compression method (see `rbench list methods`)."
)
@click.option(
    "--ratio",
    "-r",
    required=True,
    type=float,
    help="Target compression ratio N_dense / N_stored, >= 1 (e.g. 16).",
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
    help="Use this dense model (.safetensors or a state dict) instead of training one.",
)
@click.option(
    "--results-dir", default="results", show_default=True, help="Where the JSON record is written."
)
@click.option(
    "--cache-dir", default=None, help="Artifact cache (default: $RBENCH_CACHE or ~/.cache/rbench)."
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the result row.")
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
    results_dir,
    cache_dir,
    quiet,
    shard,
) -> None:
    """Compress a suite's dense model with METHOD at RATIO and evaluate it."""
    from rbench.runner import Runner

    cfg = RunConfig(
        method=method,
        ratio=ratio,
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
    )
    record = Runner(cfg).run()
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
    click.echo(f"record: {record['_path']}")


@cli.command()
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
@click.option("--data-root", default=None)
@click.option("--results-dir", default="results", show_default=True)
@click.option("--cache-dir", default=None)
@click.option("--slurm-partition", default=None, help="Slurm partition (with --executor slurm).")
@click.option("--slurm-gpus", default=1, show_default=True, type=int)
@click.option("--slurm-timeout-min", default=24 * 60, show_default=True, type=int)
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs running at once (default: one per CPU core locally, all on Slurm).",
)
def sweep(
    methods,
    ratios,
    seeds,
    suite,
    executor,
    protocol,
    data_root,
    results_dir,
    cache_dir,
    slurm_partition,
    slurm_gpus,
    slurm_timeout_min,
    max_parallel,
) -> None:
    """Run every (method, ratio, seed) as its own job, sharing one cache; rerun to resume."""
    from rbench.sweep import parse_grid
    from rbench.sweep import sweep as run_sweep

    method_list, ratio_list, seed_list = parse_grid(methods, ratios, seeds, suite)
    base = RunConfig(
        method="",
        ratio=1,
        suite=suite,
        protocol=protocol,
        data_root=data_root,
        results_dir=results_dir,
        cache_dir=cache_dir,
        quiet=True,
    )
    slurm = {"timeout_min": slurm_timeout_min}
    if executor == "slurm":
        slurm.update(slurm_partition=slurm_partition, gpus_per_node=slurm_gpus)
    results = run_sweep(
        base,
        method_list,
        ratio_list,
        seed_list,
        executor,
        slurm,
        say=lambda m: click.echo(m, err=True),
        max_parallel=max_parallel,
    )
    failed = [name for name, r in results.items() if r["status"] != "done"]
    click.echo(f"{len(results) - len(failed)} done, {len(failed)} failed")
    if failed:
        raise SystemExit(1)


@cli.group("list")
def list_() -> None:
    """List registered methods or suites."""


@list_.command("methods")
def list_methods() -> None:
    """Registered compression methods (in-tree and from installed plugins)."""
    click.echo(methods_table())


@list_.command("suites")
def list_suites() -> None:
    """Known suites: dataset, architecture, threat model, budget and protocols."""
    click.echo(suites_table())
    click.echo("* the protocol a run uses unless --protocol says otherwise")


@cli.command()
@click.option("--record", "record_path", default=None, help="A run's record (JSON).")
@click.option(
    "--checkpoint", default=None, help="A dense state dict (.safetensors) of the suite's model."
)
@click.option(
    "--suite", "-s", default=DEFAULT_SUITE, show_default=True, help="The checkpoint's suite."
)
@click.option("--data-root", default=None, help="The suite's dataset (for the test points).")
@click.option(
    "--points",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="Test points of the local Lipschitz estimate (checkpoint only; 0 skips it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the diagnostics as JSON.")
def diagnose(record_path, checkpoint, suite, data_root, points, as_json) -> None:
    """Per-layer spectra of a record's model (--record) or of a checkpoint (--checkpoint)."""
    import json

    if (record_path is None) == (checkpoint is None):
        raise RbenchError("give exactly one of --record or --checkpoint")
    if record_path is not None:
        diagnostics = record_diagnostics(record_path)
    else:
        diagnostics = checkpoint_diagnostics(checkpoint, suite, data_root, points)
    if as_json:
        click.echo(json.dumps(diagnostics, indent=2))
        return
    try:
        table = diagnostics_table(diagnostics)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # records are untrusted
        raise RbenchError(f"the diagnostics are malformed ({type(exc).__name__}: {exc})") from None
    click.echo(table)


@cli.command()
@click.option(
    "--records",
    "record_dirs",
    multiple=True,
    help="A folder of record JSON files, searched recursively; repeatable "
    "(default: leaderboard/entries).",
)
@click.option("--local", is_flag=True, help="Also read the local results/ folder.")
@click.option(
    "--out",
    default="leaderboard",
    show_default=True,
    help="Where LEADERBOARD.md, leaderboard.csv, leaderboard.json and plots/ (regenerated) go.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def leaderboard(record_dirs, local, out, no_plots) -> None:
    """Render the leaderboard from records: markdown, CSV, JSON and plots."""
    from pathlib import Path

    from rbench.leaderboard import ENTRIES, build

    dirs = [Path(d) for d in record_dirs] or [ENTRIES]
    if local:
        dirs.append(Path("results"))
    md, loaded = build(dirs, Path(out), plots=not no_plots)
    for line in loaded.skipped:
        click.echo(f"skipped {line}", err=True)
    click.echo(f"{md}: {len(loaded.records)} records from {', '.join(map(str, dirs))}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--protocol",
    "require_protocol",
    default=None,
    help="Also require this protocol (committed leaderboard entries: standard).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the problems and the summary.")
def validate(paths, require_protocol, quiet) -> None:
    """Check record JSON files (or folders of them) against the schema and the protocol.

    One line per problem; exit code 2 when any record fails."""
    from rbench.validate import validate_paths

    results = validate_paths(paths, require_protocol)
    if not results:
        raise RbenchError(f"no record files (*.json) under {', '.join(paths)}")
    failed = 0
    for path, problems in results.items():
        failed += bool(problems)
        for problem in problems:
            click.echo(f"{path}: {problem}")
        if not problems and not quiet:
            click.echo(f"{path}: ok")
    click.echo(f"{len(results)} record(s) checked, {failed} with problems")
    if failed:
        click.get_current_context().exit(2)


@cli.command()
@click.option(
    "--suite", "-s", default="digits", show_default=True, help="Suite of the pinned regression run."
)
@click.option(
    "--baseline",
    default="leaderboard/baseline.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The committed baseline to compare with (or to write, with --update).",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.02,
    show_default=True,
    help="Slack in accuracy added to the Wilson bound (0.02 = 2 points).",
)
@click.option(
    "--confidence",
    type=float,
    default=0.95,
    show_default=True,
    help="Level of the Wilson interval of the current estimate (0 leaves only the slack).",
)
@click.option("--update", is_flag=True, help="Rewrite the baseline with these results, on purpose.")
@click.option(
    "--methods",
    "-m",
    "methods",
    default=None,
    help="Comma-separated methods to run (default: every registered one).",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to run (the committed baseline was made on a CPU).",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Cache of the dense model (default: $RBENCH_CACHE or ~/.cache/rbench).",
)
@click.option("--results-dir", default=None, help="Keep the runs' records here.")
@click.option("--fresh", is_flag=True, help="Retrain the dense model instead of reusing it.")
@click.option("--verbose", "-v", is_flag=True, help="Show each run's progress.")
def check(
    suite,
    baseline,
    tolerance,
    confidence,
    update,
    methods,
    device,
    cache_dir,
    results_dir,
    fresh,
    verbose,
) -> None:
    """Rerun the pinned regression suite and compare robust accuracy with the baseline.

    Fails (exit 1), naming the method, the metric and the drop, when AutoAttack or PGD accuracy
    falls below the baseline by more than the Wilson bound of the new estimate plus the slack."""
    from rbench.regress import Pinned, Tolerance, run_check

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    report = run_check(
        Pinned(suite=suite),
        baseline_path=baseline,
        tolerance=Tolerance(slack=tolerance, confidence=confidence),
        methods=names,
        update=update,
        device=device,
        cache_dir=cache_dir,
        results_dir=results_dir,
        fresh=fresh,
        quiet=not verbose,
    )
    rows = [
        {
            "method": r.method,
            "metric": r.metric,
            "baseline %": "-" if r.baseline is None else f"{100 * r.baseline:.1f}",
            "now %": "-" if r.now is None else f"{100 * r.now:.1f}",
            "drop (pts)": "-" if r.drop is None else f"{100 * r.drop:.1f}",
            "allowed (pts)": "-" if r.allowed is None else f"{100 * r.allowed:.1f}",
            "status": r.status,
        }
        for r in report.rows
    ]
    click.echo(tabulate(rows, headers="keys", tablefmt="github"))
    for message in report.messages:
        click.echo(message)
    click.echo("check: " + ("FAILED" if report.failed else "passed"))
    if report.failed:
        click.get_current_context().exit(1)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="rbench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except RbenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("error: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
