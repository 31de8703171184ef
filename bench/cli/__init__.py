"""The `rbench` command line: the group and its entry point. Click commands only (parse, call,
print), one module a concern:

- `run`: run one compression (`run`) or a grid of them (`sweep`).
- `inspect`: look at what exists and at a model (`list methods`, `list suites`, `diagnose`).
- `publish`: what goes onto the leaderboard (`leaderboard`, `validate`, `check`).
- `export`: a suite's rows in another benchmark's entry format (`export --format robustbench`).

Every user error is one line and exit code 2."""

from __future__ import annotations

import sys

import click

from rbench import __version__
from rbench.cli.export import export
from rbench.cli.inspect import diagnose, list_
from rbench.cli.publish import check, leaderboard, validate
from rbench.cli.run import run, sweep, tune
from rbench.core.errors import RbenchError


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


for _command in (run, sweep, tune, list_, diagnose, leaderboard, validate, check, export):
    cli.add_command(_command)


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
