"""The cases of the bad-input catalogue (tests/test_bad_input_catalogue.py): the arguments, what
the one error line must say, and the input files a case needs (made in the case's own folder,
`{in}` in the arguments). A case is named '<command> <option>: <what is wrong>'; the catalogue's
completeness test reads the command and option from that name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from bad_input_files import (
    bare_network,
    both,
    code_pickle,
    corrupt_idx,
    corrupt_safetensors,
    folder,
    nested,
    other_architecture,
    text_file,
    truncated_safetensors,
)

DIGITS = ("-s", "digits")
RUN = ("run", "-m", "magnitude", "-r", "4", *DIGITS)


# ------------------------------------------------------------------ the catalogue


class Case(NamedTuple):
    args: tuple[str, ...]  # `{in}` stands for the case's folder of input files
    pattern: str  # what the error line must say
    setup: Callable[[Path], None] | None = None


C = Case
CASES: dict[str, Case] = {
    # ---- the group itself
    "rbench: unknown command": C(("nosuch",), r"No such command 'nosuch'"),
    "rbench --bogus: unknown option": C(("--bogus",), r"No such option '--bogus'"),
    "rbench --version: with a value": C(("--version=1",), r"does not take a value"),
    # ---- run
    "run --method: unknown": C(("run", "-m", "magnitud", "-r", "4"), r"unknown method 'magnitud'"),
    "run --method: missing": C(("run", "-r", "4"), r"Missing option '--method'"),
    "run --method: dense at a ratio": C(("run", "-m", "dense", "-r", "4", *DIGITS), r"compress"),
    "run --ratio: below 1": C(("run", "-m", "magnitude", "-r", "0.5"), r"--ratio must be .* >= 1"),
    "run --ratio: zero": C(("run", "-m", "magnitude", "-r", "0"), r"--ratio must be"),
    "run --ratio: negative": C(("run", "-m", "magnitude", "-r", "-1"), r"--ratio must be"),
    "run --ratio: nan": C(("run", "-m", "magnitude", "-r", "nan"), r"--ratio must be .* got nan"),
    "run --ratio: inf": C(("run", "-m", "magnitude", "-r", "inf"), r"--ratio must be"),
    "run --ratio: text": C(("run", "-m", "magnitude", "-r", "abc"), r"'abc' is not a valid float"),
    "run --ratio: unreachable": C(("run", "-m", "magnitude", "-r", "1e9", *DIGITS), "reached"),
    "run --ratio: missing": C(("run", "-m", "magnitude"), r"Missing option '--ratio'"),
    "run --suite: unknown": C((*RUN[:5], "-s", "mnist5"), r"did you mean 'mnist5k'"),
    "run --seed: negative": C((*RUN, "--seed", "-1"), r"--seed must be"),
    "run --seed: huge": C((*RUN, "--seed", str(2**40)), r"--seed must be"),
    "run --seed: text": C((*RUN, "--seed", "x"), r"'x' is not a valid integer"),
    "run --device: unknown": C((*RUN, "--device", "tpu"), r"'tpu' is not one of"),
    "run --device: cuda without a GPU": C((*RUN, "--device", "cuda"), r"no CUDA GPU"),
    "run --data-root: absent": C(
        (*RUN[:5], "-s", "mnist", "--data-root", "/nonexistent/x"), r"not a directory"
    ),
    "run --data-root: a file": C(
        (*RUN, "--data-root", "{in}/f"), r"not a directory", text_file("f", "x")
    ),
    "run --data-root: needed": C((*RUN[:5], "-s", "mnist"), r"needs --data-root"),
    "run --data-root: corrupt idx files": C(
        (*RUN[:5], "-s", "mnist", "--data-root", "{in}/data"),
        r"could not read mnist.*corrupt",
        corrupt_idx,
    ),
    "run --opt: unknown key": C((*RUN, "--opt", "lrr=0.1"), r"no option 'lrr'.*'lr'"),
    "run --opt: empty key": C((*RUN, "--opt", "=3"), r"expects key=value"),
    "run --opt: no value": C((*RUN, "--opt", "lr"), r"expects key=value"),
    "run --opt: not a float": C((*RUN, "--opt", "lr=fast"), r"lr=fast: expected a float"),
    "run --opt: nan": C((*RUN, "--opt", "lr=nan"), r"lr must be a finite number"),
    "run --opt: negative lr": C((*RUN, "--opt", "lr=-0.1"), r"lr must be .* in \(0, 10\]"),
    "run --opt: zero lr": C((*RUN, "--opt", "lr=0"), r"lr must be"),
    "run --opt: absurd lr": C((*RUN, "--opt", "lr=1e30"), r"lr must be"),
    "run --opt: negative momentum": C((*RUN, "--opt", "momentum=-1"), r"in \[0, 1\)"),
    "run --opt: momentum 1": C((*RUN, "--opt", "momentum=1"), r"momentum must be"),
    "run --opt: batch size 0": C((*RUN, "--opt", "batch_size=0"), r"batch_size must be"),
    "run --opt: batch size 1.5": C((*RUN, "--opt", "batch_size=1.5"), r"expected an integer"),
    "run --opt: negative weight decay": C((*RUN, "--opt", "weight_decay=-1"), r"weight_decay"),
    "run --opt: unknown variant": C((*RUN, "--opt", "variant=fast"), r"choose one of"),
    "run --opt: unknown choice": C((*RUN, "--opt", "scope=nope"), r"choose one of layer, global"),
    "run --protocol: unknown": C((*RUN, "--protocol", "fast"), r"no protocol 'fast'"),
    "run --epochs: negative": C((*RUN, "--epochs", "-2"), r"--epochs must be"),
    "run --epochs: 1e308": C(
        (*RUN, "--epochs", "1e308"),
        r"--epochs must be a finite number in \[0, 10000\], got 1e\+308",
    ),
    "run --epochs: inf": C((*RUN, "--epochs", "inf"), r"--epochs must be a finite number"),
    "run --epochs: nan": C((*RUN, "--epochs", "nan"), r"--epochs must be a finite number"),
    "run --epochs: text": C((*RUN, "--epochs", "ten"), r"'ten' is not a valid float"),
    "run --dense-checkpoint: missing": C(
        (*RUN, "--dense-checkpoint", "/no/such.pt"), r"does not exist"
    ),
    "run --dense-checkpoint: a folder": C(
        (*RUN, "--dense-checkpoint", "{in}/d"), r"is a folder, not a checkpoint file", folder("d")
    ),
    "run --dense-checkpoint: a text file": C(
        (*RUN, "--dense-checkpoint", "{in}/notes.pt"),
        r"neither a safetensors file nor a torch checkpoint",
        text_file("notes.pt", "these are my notes\n"),
    ),
    "run --dense-checkpoint: pickle with code": C(
        (*RUN, "--dense-checkpoint", "{in}/evil.pt"),
        r"could not be loaded safely \(weights_only=True\): it holds Python objects.*never runs",
        code_pickle,
    ),
    "run --dense-checkpoint: corrupt safetensors": C(
        (*RUN, "--dense-checkpoint", "{in}/bad.safetensors"),
        r"not a readable safetensors file",
        corrupt_safetensors,
    ),
    "run --dense-checkpoint: truncated safetensors": C(
        (*RUN, "--dense-checkpoint", "{in}/cut.safetensors"),
        r"not a readable safetensors file",
        truncated_safetensors,
    ),
    "run --dense-checkpoint: another architecture": C(
        (*RUN, "--dense-checkpoint", "{in}/l.pt"),
        r"does not fit this suite's architecture",
        other_architecture,
    ),
    "run --dense-checkpoint: bare network, normalisation unsaid": C(
        (*RUN, "--dense-checkpoint", "{in}/bare.pt"),
        r"bare network .* pass --input-normalization none .* or suite",
        bare_network,
    ),
    "run --input-normalization: unknown": C(
        (*RUN, "--input-normalization", "imagenet"), r"'imagenet' is not one of 'none', 'suite'"
    ),
    "run --input-normalization: without a checkpoint": C(
        (*RUN, "--input-normalization", "none"), r"applies only with --dense-checkpoint"
    ),
    "run --results-dir: a file": C(
        (*RUN, "--results-dir", "{in}/f"), r"--results-dir .* is a file", text_file("f", "x")
    ),
    "run --results-dir: under a file": C(
        (*RUN, "--results-dir", "{in}/f/sub"), r"cannot write to", text_file("f", "x")
    ),
    "run --cache-dir: a file": C(
        (*RUN, "--cache-dir", "{in}/f"), r"--cache-dir .* is a file", text_file("f", "x")
    ),
    "run --cache-dir: under a file": C(
        (*RUN, "--cache-dir", "{in}/f/sub"), r"cannot write to", text_file("f", "x")
    ),
    "run --quiet: with a value": C((*RUN, "--quiet=yes"), r"does not take a value"),
    "run --tuning: absent folder": C((*RUN, "--tuning", "/no/tuning"), r"--tuning .* not a folder"),
    "run --tuning: nested tuning record": C(
        (*RUN, "--tuning", "{in}/t"),
        r"tuning record .* unreadable",
        nested("t/digits/magnitude.json"),
    ),
    "run --shard: no slash": C((*RUN, "--shard", "1"), r"--shard expects I/N"),
    "run --shard: index past count": C((*RUN, "--shard", "3/2"), r"--shard must be i/n"),
    "run --shard: negative": C((*RUN, "--shard", "-1/2"), r"--shard expects I/N"),
    "run --shard: zero shards": C((*RUN, "--shard", "0/0"), r"--shard must be i/n"),
    # ---- sweep
    "sweep --methods: only separators": C(
        ("sweep", "--methods", " , ", "--ratios", "4"), r"--methods names nothing"
    ),
    "sweep --methods: unknown": C(
        ("sweep", "--methods", "nosuch", "--ratios", "4"), r"unknown method 'nosuch'"
    ),
    "sweep --methods: empty item": C(
        ("sweep", "--methods", "magnitude,,cstar", "--ratios", "4"), r"has an empty item"
    ),
    "sweep --methods: twice": C(
        ("sweep", "--methods", "magnitude,magnitude", "--ratios", "4"), r"names an item twice"
    ),
    "sweep --methods: missing": C(("sweep", "--ratios", "4"), r"Missing option '--methods'"),
    "sweep --ratios: text": C(
        ("sweep", "--methods", "magnitude", "--ratios", "abc"), r"--ratios: 'abc' is not a number"
    ),
    "sweep --ratios: below 1": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4,0.5"), r"--ratio must be .* >= 1"
    ),
    "sweep --ratios: empty": C(
        ("sweep", "--methods", "magnitude", "--ratios", ""), r"--ratios names nothing"
    ),
    "sweep --ratios: twice": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4,4.0"), r"names a ratio twice"
    ),
    "sweep --seeds: negative": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--seeds", "-1"), r"--seed must be"
    ),
    "sweep --seeds: text": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--seeds", "0,x"), r"not an integer"
    ),
    "sweep --suite: unknown": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "-s", "nosuch"), r"unknown suite"
    ),
    "sweep --executor: unknown": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--executor", "ray"), r"not one of"
    ),
    "sweep --protocol: unknown": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "-s", "digits", "--protocol", "x"),
        r"no protocol 'x'",
    ),
    "sweep --epochs: 1e308": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--epochs", "1e308"), r"--epochs"
    ),
    "sweep --tuning: absent folder": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--tuning", "/no/t"), r"--tuning"
    ),
    "sweep --data-root: absent": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--data-root", "/no/d"),
        r"not a directory",
    ),
    "sweep --results-dir: a file": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--results-dir", "{in}/f"),
        r"--results-dir .* is a file",
        text_file("f", "x"),
    ),
    "sweep --cache-dir: a file": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--cache-dir", "{in}/f"),
        r"--cache-dir .* is a file",
        text_file("f", "x"),
    ),
    "sweep --slurm-partition: without slurm": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--slurm-partition", "gpu"),
        r"--slurm-partition applies only with --executor slurm",
    ),
    "sweep --slurm-gpus: negative": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--slurm-gpus", "-1"),
        r"not in the range",
    ),
    "sweep --slurm-timeout-min: zero": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--slurm-timeout-min", "0"),
        r"not in the range",
    ),
    "sweep --max-parallel: zero": C(
        ("sweep", "--methods", "magnitude", "--ratios", "4", "--max-parallel", "0"),
        r"not in the range",
    ),
    # ---- tune
    "tune --method: unknown": C(("tune", "-m", "nosuch"), r"unknown method 'nosuch'"),
    "tune --method: nothing to tune": C(("tune", "-m", "dense", *DIGITS), r"no fine-tuning rate"),
    "tune --suite: unknown": C(("tune", "-m", "magnitude", "-s", "nosuch"), r"unknown suite"),
    "tune --ratio: below 1": C(("tune", "-m", "magnitude", "-r", "0.5"), r"--ratio must be"),
    "tune --seed: negative": C(("tune", "-m", "magnitude", "--seed", "-1"), r"--seed must be"),
    "tune --multiples: text": C(("tune", "-m", "magnitude", "--multiples", "a,b"), r"numbers"),
    "tune --multiples: zero": C(("tune", "-m", "magnitude", "--multiples", "0"), r"positive"),
    "tune --multiples: twice": C(("tune", "-m", "magnitude", "--multiples", "1,1"), r"twice"),
    "tune --out: a file": C(
        ("tune", "-m", "magnitude", "--out", "{in}/f"), r"--out .* is a file", text_file("f", "x")
    ),
    "tune --epochs: 1e308": C(("tune", "-m", "magnitude", "--epochs", "1e308"), r"--epochs"),
    "tune --device: unknown": C(("tune", "-m", "magnitude", "--device", "tpu"), r"not one of"),
    "tune --data-root: absent": C(
        ("tune", "-m", "magnitude", "--data-root", "/no/d"), r"not a directory"
    ),
    "tune --cache-dir: a file": C(
        ("tune", "-m", "magnitude", "--cache-dir", "{in}/f"), r"is a file", text_file("f", "x")
    ),
    "tune --quiet: with a value": C(("tune", "-m", "magnitude", "--quiet=1"), r"take a value"),
    "tune --force: with a value": C(("tune", "-m", "magnitude", "--force=1"), r"take a value"),
    # ---- leaderboard
    "leaderboard --records: absent folder": C(
        ("leaderboard", "--records", "/no/records"), r"records folder .* does not exist"
    ),
    "leaderboard --records: a file": C(
        ("leaderboard", "--records", "{in}/f"), r"--records .* is a file", text_file("f", "{}")
    ),
    "leaderboard --records: default folder absent": C(("leaderboard",), r"does not exist"),
    "leaderboard --local: no results folder": C(
        ("leaderboard", "--records", "{in}/r", "--local"), r"'results' does not exist", folder("r")
    ),
    "leaderboard --out: an existing file": C(
        ("leaderboard", "--records", "{in}/r", "--out", "{in}/f"),
        r"--out .* is a file",
        both(folder("r"), text_file("f", "x")),
    ),
    "leaderboard --no-plots: with a value": C(("leaderboard", "--no-plots=1"), r"take a value"),
    # ---- validate
    "validate PATHS: none": C(("validate",), r"Missing argument"),
    "validate PATHS: absent": C(("validate", "/no/record.json"), r"'/no/record.json' does not"),
    "validate PATHS: empty folder": C(("validate", "{in}/r"), r"no record files", folder("r")),
    "validate --protocol: unknown": C(
        ("validate", "{in}/r", "--protocol", "nosuch"), r"no suite's protocol", folder("r")
    ),
    "validate --quiet: with a value": C(("validate", "x.json", "--quiet=1"), r"take a value"),
    # ---- diagnose
    "diagnose: neither record nor checkpoint": C(("diagnose",), r"exactly one of"),
    "diagnose --record: with a checkpoint too": C(
        ("diagnose", "--record", "a.json", "--checkpoint", "b.pt"), r"exactly one of"
    ),
    "diagnose --record: absent": C(("diagnose", "--record", "/no/r.json"), r"does not exist"),
    "diagnose --record: a folder": C(("diagnose", "--record", "{in}/d"), r"folder", folder("d")),
    "diagnose --record: deeply nested JSON": C(
        ("diagnose", "--record", "{in}/deep.json"), r"nests 100000 levels", nested("deep.json")
    ),
    "diagnose --record: not an object": C(
        ("diagnose", "--record", "{in}/l.json"), r"JSON list", text_file("l.json", "[1, 2]")
    ),
    "diagnose --record: NaN": C(
        ("diagnose", "--record", "{in}/n.json"),
        r"NaN is not allowed",
        text_file("n.json", '{"a": NaN}'),
    ),
    "diagnose --record: not a record": C(
        ("diagnose", "--record", "{in}/o.json"), r"fails the schema", text_file("o.json", "{}")
    ),
    "diagnose --checkpoint: absent": C(("diagnose", "--checkpoint", "/no/c.pt"), r"does not exist"),
    "diagnose --checkpoint: a text file": C(
        ("diagnose", "--checkpoint", "{in}/t.pt"), r"neither", text_file("t.pt", "hello")
    ),
    "diagnose --checkpoint: pickle with code": C(
        ("diagnose", "--checkpoint", "{in}/evil.pt", *DIGITS), r"loaded safely", code_pickle
    ),
    "diagnose --suite: unknown": C(
        ("diagnose", "--checkpoint", "{in}/t.pt", "-s", "nosuch"),
        r"unknown suite",
        text_file("t.pt", "x"),
    ),
    "diagnose --data-root: absent": C(
        ("diagnose", "--checkpoint", "{in}/t.pt", "-s", "mnist", "--data-root", "/no/d"),
        r"not a directory",
        text_file("t.pt", "x"),
    ),
    "diagnose --points: negative": C(
        ("diagnose", "--checkpoint", "c.pt", "--points", "-1"), r"not in the range"
    ),
    "diagnose --input-normalization: bare network unsaid": C(
        ("diagnose", "--checkpoint", "{in}/bare.pt", *DIGITS), r"bare network", bare_network
    ),
    "diagnose --input-normalization: with a record": C(
        ("diagnose", "--record", "{in}/o.json", "--input-normalization", "none"),
        r"applies only with --checkpoint",
        text_file("o.json", "{}"),
    ),
    "diagnose --json: with a value": C(("diagnose", "--json=1"), r"take a value"),
    # ---- check
    "check --suite: unknown": C(("check", "-s", "nosuch"), r"unknown suite"),
    "check --baseline: absent": C(("check", "--baseline", "{in}/b.json"), r"no baseline at"),
    "check --baseline: a folder": C(
        ("check", "--baseline", "{in}/d"), r"is a directory", folder("d")
    ),
    "check --baseline: deeply nested": C(
        ("check", "--baseline", "{in}/b.json"), r"nests 100000 levels", nested("b.json")
    ),
    "check --tolerance: negative": C(("check", "--tolerance", "-1"), r"--tolerance must be"),
    "check --tolerance: nan": C(("check", "--tolerance", "nan"), r"--tolerance must be"),
    "check --confidence: 1": C(("check", "--confidence", "1"), r"--confidence must be"),
    "check --methods: only separators": C(("check", "--methods", " , "), r"empty item"),
    "check --methods: unknown": C(
        ("check", "--methods", "nosuch", "--update", "--baseline", "{in}/b.json"),
        r"unknown method 'nosuch'",
    ),
    "check --update: with a value": C(("check", "--update=1"), r"take a value"),
    "check --device: unknown": C(("check", "--device", "tpu"), r"not one of"),
    "check --cache-dir: a file": C(
        ("check", "--cache-dir", "{in}/f"), r"--cache-dir .* is a file", text_file("f", "x")
    ),
    "check --results-dir: under a file": C(
        ("check", "--results-dir", "{in}/f/r"), r"cannot write to", text_file("f", "x")
    ),
    "check --fresh: with a value": C(("check", "--fresh=1"), r"take a value"),
    "check --verbose: with a value": C(("check", "--verbose=1"), r"take a value"),
    # ---- --json (machine-readable output, rbench.api): a flag takes no value
    **{
        f"{command} --json: with a value": C(
            (*command.split(), "--json=1"), r"does not take a value"
        )
        for command in ("run", "sweep", "check", "list methods", "list suites", "export")
    },
    # ---- export (rbench.report.export)
    "export: no suite": C(("export", "--out", "{in}/o"), r"Missing option '--suite'"),
    "export --format: unknown": C(
        ("export", *DIGITS, "--out", "{in}/o", "--format", "csv"), r"'csv' is not 'robustbench'"
    ),
    "export --suite: unknown": C(
        ("export", "--suite", "nosuch", "--out", "{in}/o"), r"unknown suite"
    ),
    "export --out: an existing file": C(
        ("export", *DIGITS, "--out", "{in}/f"), r"--out .* is a file", text_file("f", "x")
    ),
    "export --records: absent folder": C(
        ("export", *DIGITS, "--out", "{in}/o", "--records", "/no/records"),
        r"records folder .* does not exist",
    ),
    "export --protocol: not the suite's": C(
        ("export", *DIGITS, "--out", "{in}/o", "--records", "{in}/r", "--protocol", "nosuch"),
        r"has no protocol 'nosuch'",
        folder("r"),
    ),
    # ---- list
    "list: unknown listing": C(("list", "things"), r"No such command 'things'"),
    "list methods: an argument": C(("list", "methods", "extra"), r"unexpected extra argument"),
    "list suites: an option": C(("list", "suites", "--all"), r"No such option '--all'"),
}
