"""`rbench leaderboard`, `rbench validate` and `rbench check`: render, vet and guard the results."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from tabulate import tabulate

from rbench.core.errors import RbenchError


@click.command()
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

    from rbench.report.leaderboard import ENTRIES, build

    dirs = [Path(d) for d in record_dirs] or [ENTRIES]
    if local:
        dirs.append(Path("results"))
    if Path(out).exists() and not Path(out).is_dir():
        raise RbenchError(f"--out '{out}' is a file; the leaderboard is written into a folder")
    for folder in dirs:
        if Path(folder).exists() and not Path(folder).is_dir():
            raise RbenchError(f"--records '{folder}' is a file; give a folder of records")
    md, loaded = build(dirs, Path(out), plots=not no_plots)
    for line in loaded.skipped:
        click.echo(f"skipped {line}", err=True)
    click.echo(f"{md}: {len(loaded.records)} records from {', '.join(map(str, dirs))}")
    click.echo(f"web page: {md.parent / 'index.html'} (sortable, filterable; opens offline)")


@click.command()
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
    from rbench.core.suites import SUITES
    from rbench.report.validate import validate_paths

    known = sorted({p.name for suite in SUITES.values() for p in suite.protocols})
    if require_protocol is not None and require_protocol not in known:
        raise RbenchError(
            f"--protocol '{require_protocol}' is no suite's protocol; choose {', '.join(known)}"
        )
    from pathlib import Path

    for path in paths:  # a path that is not there is a typo, not a record with problems
        if not Path(path).exists() and not Path(path).is_symlink():
            raise RbenchError(f"'{path}' does not exist")
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


@click.command()
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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the comparison as one JSON document on stdout (progress: stderr).",
)
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
    as_json,
) -> None:
    """Rerun the pinned regression suite and compare robust accuracy with the baseline.

    Fails (exit 1), naming the method, the metric and the drop, when AutoAttack or PGD accuracy
    falls below the baseline by more than the Wilson bound of the new estimate plus the slack."""
    from pathlib import Path

    from rbench.core.config import check_writable
    from rbench.core.suites import get_suite
    from rbench.regress import Pinned, Tolerance, run_check
    from rbench.store.safejson import read_data

    names = None  # every registered method; unknown names are refused before any run
    if methods is not None:
        names = [m.strip() for m in methods.split(",")]
        if not any(names) or "" in names:
            raise RbenchError(f"--methods '{methods}' has an empty item; e.g. magnitude,hydra")
    get_suite(suite)
    if Path(baseline).is_file():
        read_data(baseline, "the baseline")  # size and nesting limits before it is parsed
    for what, folder in (("--cache-dir", cache_dir), ("--results-dir", results_dir)):
        if folder is not None:
            if Path(folder).exists() and not Path(folder).is_dir():
                raise RbenchError(f"{what} '{folder}' is a file, not a folder")
            check_writable(Path(folder))
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
    if as_json:  # one document on stdout: the rows (fractions), the messages, the outcome
        document = {
            "passed": not report.failed,
            "baseline": str(report.baseline_path),
            "updated": report.updated,
            "rows": [{**asdict(r), "drop": r.drop} for r in report.rows],
            "messages": report.messages,
        }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(tabulate(rows, headers="keys", tablefmt="github"))
        for message in report.messages:
            click.echo(message)
        click.echo("check: " + ("FAILED" if report.failed else "passed"))
    if report.failed:
        click.get_current_context().exit(1)
