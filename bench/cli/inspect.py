"""`rbench list` and `rbench diagnose`: what is registered, and the spectra of one model."""

from __future__ import annotations

import json

import click

from rbench.core.errors import RbenchError
from rbench.core.suites import DEFAULT_SUITE
from rbench.report.tables import (
    checkpoint_diagnostics,
    diagnostics_table,
    methods_table,
    record_diagnostics,
    suites_table,
)


@click.group("list")
def list_() -> None:
    """List registered methods or suites."""


_JSON = click.option(
    "--json", "as_json", is_flag=True, help="Print them as one JSON document (rbench.api)."
)


@list_.command("methods")
@_JSON
def list_methods(as_json) -> None:
    """Registered compression methods (in-tree and from installed plugins)."""
    if as_json:
        from rbench import api

        click.echo(json.dumps({"methods": api.methods()}, indent=2, default=str))
        return
    click.echo(methods_table())


@list_.command("suites")
@_JSON
def list_suites(as_json) -> None:
    """Known suites: dataset, architecture, threat model, budget and protocols."""
    if as_json:
        from rbench import api

        click.echo(json.dumps({"suites": api.suites()}, indent=2, default=str))
        return
    click.echo(suites_table())
    click.echo("* the protocol a run uses unless --protocol says otherwise")


@click.command()
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
@click.option(
    "--input-normalization",
    type=click.Choice(["none", "suite"]),
    default=None,
    help="What a bare network's checkpoint expects (see `rbench run --help`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the diagnostics as JSON.")
def diagnose(
    record_path, checkpoint, suite, data_root, points, input_normalization, as_json
) -> None:
    """Per-layer spectra of a record's model (--record) or of a checkpoint (--checkpoint)."""
    import json

    if (record_path is None) == (checkpoint is None):
        raise RbenchError("give exactly one of --record or --checkpoint")
    if record_path is not None:
        if input_normalization is not None:
            raise RbenchError("--input-normalization applies only with --checkpoint")
        diagnostics = record_diagnostics(record_path)
    else:
        from rbench.core.suites import get_suite
        from rbench.data.datasets import check_data_root

        if data_root is not None:
            check_data_root(get_suite(suite).dataset, data_root)
        diagnostics = checkpoint_diagnostics(
            checkpoint, suite, data_root, points, input_normalization
        )
    if as_json:
        click.echo(json.dumps(diagnostics, indent=2))
        return
    try:
        table = diagnostics_table(diagnostics)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # records are untrusted
        raise RbenchError(f"the diagnostics are malformed ({type(exc).__name__}: {exc})") from None
    click.echo(table)
