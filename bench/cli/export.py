"""`rbench export`: a suite's leaderboard rows in another benchmark's entry format."""

from __future__ import annotations

import json

import click

FORMATS = ("robustbench",)  # rbench.report.export.FORMATS, without importing pandas at startup


@click.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="robustbench",
    show_default=True,
    help="Entry format: RobustBench's model_info JSON.",
)
@click.option("--suite", "-s", required=True, help="The suite whose rows to export.")
@click.option(
    "--out",
    required=True,
    help="Folder to write into, as RobustBench lays it out: OUT/<dataset>/<norm>/<id>.json.",
)
@click.option(
    "--records",
    "record_dirs",
    multiple=True,
    help="A folder of record JSON files, searched recursively; repeatable "
    "(default: leaderboard/entries).",
)
@click.option(
    "--protocol",
    default="standard",
    show_default=True,
    help="Export the rows of this protocol (RobustBench's numbers are AutoAttack standard).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def export(fmt, suite, out, record_dirs, protocol, as_json) -> None:
    """Write one RobustBench-style entry per leaderboard row of SUITE (seeds pooled)."""
    from pathlib import Path

    from rbench.core.errors import RbenchError
    from rbench.report.export import export as run_export
    from rbench.report.leaderboard import ENTRIES

    if Path(out).exists() and not Path(out).is_dir():
        raise RbenchError(f"--out '{out}' is a file; the entries are written into a folder")
    dirs = [Path(d) for d in record_dirs] or [ENTRIES]
    written, skipped = run_export(dirs, suite, Path(out), fmt, protocol)
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
    if as_json:
        click.echo(json.dumps({"format": fmt, "entries": [str(p) for p in written]}, indent=2))
        return
    for path in written:
        click.echo(str(path))
    click.echo(f"{len(written)} {fmt} entries of suite '{suite}' written under {out}")
