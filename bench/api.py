"""rbench's Python API: what the command line does, as functions that return data. The CLI's
`run`, `sweep` and `list` call these, so a notebook and the command line share one code path.

    from rbench import api

    record = api.run("magnitude", 4, suite="digits", epochs=0.2)   # one run: its record (a dict)
    api.sweep(["magnitude", "random"], [4, 16], seeds=[0, 1], suite="digits")
    table = api.load_records(["results"])       # a pandas DataFrame, one flat row per record
    api.leaderboard(["results"], "board")       # board/LEADERBOARD.md, CSV, JSON, HTML, plots

Options are keywords named like the command line's (`--data-root` is `data_root`); method
hyperparameters go in `opts` as a dict (`opts={"lr": 0.02}`), typed and range-checked exactly like
`--opt lr=0.02`. Bad input raises `rbench.core.errors.RbenchError` with the CLI's one-line message.
docs/api.md has a worked example (executed by tests/test_api.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from rbench.core.config import RunConfig
from rbench.core.errors import RbenchError, nearest
from rbench.core.suites import DEFAULT_SUITE

__all__ = ["config", "leaderboard", "load_records", "methods", "run", "run_config", "suites"]
__all__ += ["sweep"]

_FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
# per-point data of a record row (rbench.report.rows.record_row): in the records, not in the table
PER_POINT = ("aa_bits", "curve")


def _text(value) -> str:
    """A Python value as `--opt` text: what the CLI would have been given."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(_text(v) for v in value)
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def _opts(opts) -> tuple[tuple[str, str], ...]:
    if opts is None:
        return ()
    pairs = opts.items() if isinstance(opts, Mapping) else opts
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise RbenchError(f"opts takes a dict or (key, value) pairs, got {pair!r}")
        out.append((str(pair[0]), pair[1] if isinstance(pair[1], str) else _text(pair[1])))
    return tuple(out)


def config(method: str, ratio: float, suite: str = DEFAULT_SUITE, **options) -> RunConfig:
    """The RunConfig of a run: `options` are RunConfig's fields (seed, device, data_root, opts,
    protocol, epochs, dense_checkpoint, input_normalization, results_dir, cache_dir, quiet,
    tuning, shard). Paths may be `pathlib.Path`s; nothing is checked or created yet."""
    unknown = sorted(set(options) - set(_FIELDS))
    if unknown:
        raise RbenchError(
            f"unknown run option '{unknown[0]}'{nearest(unknown[0], _FIELDS)}; "
            f"the options are {', '.join(f for f in _FIELDS if f not in ('method', 'ratio'))}"
        )
    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    values["opts"] = _opts(values.get("opts"))
    if values.get("shard") is not None:
        values["shard"] = tuple(values["shard"])
    return RunConfig(method=method, ratio=ratio, suite=suite, **values)


def run_config(cfg: RunConfig) -> dict:
    """Run one configuration: dense model (cached), compress, evaluate, write the record.
    Returns the record as written, plus `_path` (where it was written); a `--shard` run returns
    {"_shard": "i/n", "_ranges": [...]} instead."""
    from rbench.runner import Runner

    return Runner(cfg).run()


def run(method: str, ratio: float, suite: str = DEFAULT_SUITE, **options) -> dict:
    """`rbench run`: compress `suite`'s dense model with `method` at `ratio` and evaluate it.
    Returns the record (see `run_config`). Example: `run("cstar", 16, epochs=2, seed=1)`."""
    return run_config(config(method, ratio, suite, **options))


def sweep(
    methods: Sequence[str],
    ratios: Sequence[float],
    seeds: Sequence[int] = (0,),
    suite: str = DEFAULT_SUITE,
    *,
    executor: str = "local",
    max_parallel: int | None = None,
    slurm: dict | None = None,
    say: Callable[[str], None] | None = None,
    **options,
) -> dict[str, dict]:
    """`rbench sweep`: every (method, ratio, seed) as its own job (submitit: "local" processes,
    "slurm" jobs or "debug" in-process), sharing one cache; jobs whose records exist are skipped.
    Returns {job name: {"status": "done", "record": path, "autoattack": accuracy} or
    {"status": "failed", "error": line}}. `say` gets the progress lines (default: stderr)."""
    from rbench.core.progress import note
    from rbench.sweep import parse_grid
    from rbench.sweep import sweep as run_sweep

    def joined(items: Iterable) -> str:
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise RbenchError(f"give a list, got {items!r}")
        return ",".join(_text(i) for i in items)

    method_list, ratio_list, seed_list = parse_grid(
        joined(methods), joined(ratios), joined(seeds), suite
    )
    base = config("", 1, suite, **{"quiet": True, **options})
    return run_sweep(
        base,
        method_list,
        ratio_list,
        seed_list,
        executor,
        slurm,
        say=say or note,
        max_parallel=max_parallel,
    )


def _dirs(dirs) -> list[Path]:
    return [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]


def load_records(dirs):
    """Every record under `dirs` (a folder or a list; searched recursively) that passes the
    leaderboard's checks, as a pandas DataFrame: one flat row per record (the leaderboard's
    `rbench.report.rows.record_row`, without the per-point arrays) plus its `path`. Records that
    were skipped, and why, are in `frame.attrs["skipped"]`."""
    import pandas as pd

    from rbench.report.leaderboard import load_records as load

    loaded = load(_dirs(dirs))
    rows = [
        {**{k: v for k, v in r["_row"].items() if k not in PER_POINT}, "path": r["_path"]}
        for r in loaded.records
    ]
    frame = pd.DataFrame(rows)
    frame.attrs["skipped"] = list(loaded.skipped)
    return frame


def leaderboard(dirs, out, plots: bool = True) -> Path:
    """`rbench leaderboard`: render the records under `dirs` into `out` (LEADERBOARD.md,
    leaderboard.csv, leaderboard.json, index.html, plots/). Returns the markdown file's path."""
    from rbench.report.leaderboard import build

    path, _ = build(_dirs(dirs), Path(out), plots=plots)
    return path


def methods() -> list[dict]:
    """The registered methods (in-tree and plugins): id, kind, variants, summary, citation and
    the config's defaults (every `--opt` key)."""
    from rbench.methods import load_methods

    out = []
    for m in sorted(load_methods().values(), key=lambda m: m.name):
        defaults = dataclasses.asdict(m.Config())
        out.append(
            {
                "name": m.name,
                "kind": m.kind,
                "variants": list(m.variants),
                "summary": m.summary(),
                "citation": m.citation,
                "options": defaults,
            }
        )
    return out


def suites() -> list[dict]:
    """The known suites, each as its full definition plus `default` (the default suite) and
    `embedded` (its data ships with rbench)."""
    from rbench.core.suites import SUITES

    return [
        {**s.to_dict(), "default": s.name == DEFAULT_SUITE, "embedded": s.data.embedded}
        for s in SUITES.values()
    ]
