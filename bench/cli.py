"""The `rbench` command line: parse, call, print. Every user error is one line and exit code 2."""

from __future__ import annotations

import sys

import click
from tabulate import tabulate

from rbench import __version__
from rbench.errors import RbenchError
from rbench.suites import DEFAULT_SUITE


def _pct(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _parse_opts(opts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RbenchError(f"--opt expects key=value, got '{item}'")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


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
) -> None:
    """Compress a suite's dense model with METHOD at RATIO and evaluate it."""
    from rbench.runner import RunConfig, Runner

    cfg = RunConfig(
        method=method,
        ratio=ratio,
        suite=suite,
        seed=seed,
        device=device,
        data_root=data_root,
        opts=_parse_opts(opts),
        protocol=protocol,
        epochs=epochs,
        dense_checkpoint=dense_checkpoint,
        results_dir=results_dir,
        cache_dir=cache_dir,
        quiet=quiet,
    )
    record = Runner(cfg).run()
    click.echo(result_table([record]))
    flags = record["flags"]
    if flags:
        click.echo("flags: " + "; ".join(f"{k}: {v}" for k, v in flags.items()))
    click.echo(f"record: {record['_path']}")


def result_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        m, c = r["metrics"], r["compression"]
        rows.append(
            {
                "suite": r["suite"]["name"],
                "method": r["method"]["name"],
                "variant": r["method"]["variant"],
                "ratio (req)": f"{r['budget']['ratio']:g}",
                "ratio (measured)": f"{c['ratio']:.2f}",
                "MACs ratio": f"{c['macs_ratio']:.2f}",
                "clean %": _pct(m["clean"]),
                "PGD %": _pct(m["pgd"]),
                "AutoAttack %": _pct(m["autoattack"]),
                "compute (AT-ep)": f"{r['compute']['used_epochs']:.2f}/{r['compute']['budget_epochs']:g}",
                "protocol": f"{r['protocol']['name']} n={m['autoattack']['n']}",
            }
        )
    return tabulate(rows, headers="keys", tablefmt="github")


@cli.group("list")
def list_() -> None:
    """List registered methods or suites."""


@list_.command("methods")
def list_methods() -> None:
    """Registered compression methods (in-tree and from installed plugins)."""
    from rbench.registry import load_methods

    rows = [
        {"method": m.name, "kind": m.kind, "variants": ",".join(m.variants), "what": m.summary()}
        for m in sorted(load_methods().values(), key=lambda m: m.name)
    ]
    click.echo(tabulate(rows, headers="keys", tablefmt="github"))


@list_.command("suites")
def list_suites() -> None:
    """Known suites: dataset, architecture, threat model, budget and protocols."""
    from rbench.suites import SUITES

    rows = []
    for s in SUITES.values():
        rows.append(
            {
                "suite": s.name + (" (default)" if s.name == DEFAULT_SUITE else ""),
                "data": s.dataset + ("" if s.data.embedded else " (--data-root)"),
                "arch": s.arch,
                "threat": str(s.threat),
                "dense recipe": f"{s.dense.epochs} ep PGD-{s.dense.attack.steps} {s.dense.optimizer}",
                "budget": f"{s.compress_epochs:g} AT-ep",
                "protocols": ", ".join(
                    f"{p.name}{'*' if p.name == s.default_protocol else ''} (n={p.n_eval})"
                    for p in s.protocols
                ),
            }
        )
    click.echo(tabulate(rows, headers="keys", tablefmt="github"))
    click.echo("* the protocol a run uses unless --protocol says otherwise")


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
