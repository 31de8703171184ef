"""The bad-input catalogue: every command of the CLI refuses bad input with exit code 2, exactly
one line on stderr starting with `error:`, no traceback, and no file or folder created anywhere
(each case runs in its own empty folder, with its own working directory, HOME, RBENCH_CACHE and
temporary folder, and compares every path under it before and after).

Complete by construction: `test_every_option_of_every_command_has_a_case` walks the click tree
and fails for an option, argument or command without a case below, and
`test_every_method_field_declares_its_range` fails for a numeric method hyperparameter without a
declared range (rbench.core.fields); each declared field then gets generated cases
(`test_every_method_field_refuses_bad_values`: out of its range, not a number, not a choice)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import typing
import warnings
from pathlib import Path

import click
import pytest
import torch
import torchvision.datasets  # noqa: F401
from bad_input_cases import CASES, DIGITS, RUN, Case, code_pickle

import rbench.report.leaderboard  # noqa: F401  (matplotlib and pandas imported with the real HOME)
import rbench.runner  # noqa: F401
from rbench.cli import cli as rbench_group
from rbench.core.fields import field_range
from rbench.methods import load_methods

# ------------------------------------------------------------------ running one case


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A case's own world: cwd, HOME, RBENCH_CACHE and the temporary folder under tmp_path, with
    Python's warnings printed to stderr as the real command would print them."""
    for name in ("cwd", "home", "cache", "tmp", "inputs"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", category)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        )
        yield tmp_path


def assert_refused(cli, root: Path, case: Case) -> str:
    inputs = root / "inputs"
    if case.setup is not None:
        case.setup(inputs)
    before = snapshot(root)
    args = [a.replace("{in}", str(inputs)) for a in case.args]
    code, out, err = cli(*args)
    lines = err.splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert re.search(case.pattern, lines[0]), lines[0]
    assert snapshot(root) == before, sorted(snapshot(root) - before)
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(name, cli, isolated):
    if name == "run --device: cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_refused(cli, isolated, CASES[name])


def test_the_catalogue_has_at_least_sixty_cases():
    assert len(CASES) >= 60


# ------------------------------------------------------------------ completeness


def command_params(group: click.Group, prefix: str = "rbench") -> dict[str, list[str]]:
    """{command path: its option and argument names} for every command under the group."""
    out = {}
    for name, command in sorted(group.commands.items()):
        path = name if prefix == "rbench" else f"{prefix} {name}"
        out[path] = [
            p.opts[0] if isinstance(p, click.Option) else p.name.upper()
            for p in command.params
            if p.name not in ("help",)
        ]
        if isinstance(command, click.Group):
            out.update(command_params(command, path))
    out["rbench"] = [p.opts[0] for p in group.params if p.name not in ("help",)]
    return out


def covered() -> set[tuple[str, str | None]]:
    """(command, option) pairs the catalogue's names say they cover: 'run --ratio: nan'."""
    out = set()
    for name in CASES:
        head = name.split(":")[0].split()
        options = [w for w in head if w.startswith("-") or w.isupper()]
        command = " ".join(w for w in head if w not in options)
        out.add((command, options[0] if options else None))
    return out


def test_every_option_of_every_command_has_a_case():
    have = covered()
    params = command_params(rbench_group)
    missing = [
        f"{command} {option}"
        for command, options in params.items()
        for option in options
        if (command, option) not in have
    ]
    missing += [c for c in params if not any(cmd == c for cmd, _ in have)]
    assert not missing, f"bad-input cases missing for: {', '.join(missing)}"


# ------------------------------------------------------------------ every method field


def declared_methods():
    """The registered methods of this checkout and of installed plugins (not test doubles)."""
    return {
        name: cls
        for name, cls in sorted(load_methods().items())
        if cls.__module__.startswith("rbench.methods.") or "plugin" in cls.__module__
    }


def _kind(annotation):
    """(base type, allows None) of a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def bad_values(method, f, annotation) -> list[tuple[str, str]]:
    """(value text, what the error must say) for one field; [] for free text."""
    kind, _ = _kind(annotation)
    if f.name == "variant":
        return [("fast", r"no variant 'fast'|choose one of")]
    if typing.get_origin(kind) is typing.Literal:
        return [("not-a-choice", r"choose one of")]
    if kind is bool:
        return [("maybe", r"expected a bool")]
    allowed = field_range(method.name, f)
    if allowed is None:
        return []  # free text, or undeclared (test_every_method_field_declares_its_range)
    if typing.get_origin(kind) is tuple:
        inside = [repr(v) for v in getattr(method.Config(), f.name)]
        out = [(inside[0], r"comma-separated values")] if len(inside) > 1 else []
        return out + [
            (",".join([*inside[:-1], repr(v)]), rf"{f.name} must be") for v in allowed.outside()
        ]
    if kind is int:
        return [("1.5", r"expected an integer")] + [
            (str(int(v)), rf"{f.name} must be") for v in allowed.outside()
        ]
    return [("abc", r"expected a float"), ("nan", rf"{f.name} must be a finite number")] + [
        (repr(float(v)), rf"{f.name} must be") for v in allowed.outside()
    ]


def field_cases() -> dict[str, tuple[str, str, str]]:
    out = {}
    for name, method in declared_methods().items():
        hints = typing.get_type_hints(method.Config)
        for f in dataclasses.fields(method.Config):
            for value, pattern in bad_values(method, f, hints[f.name]):
                out[f"{name}.{f.name}={value}"] = (name, f"{f.name}={value}", pattern)
    return out


FIELD_CASES = field_cases()


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_every_method_field_refuses_bad_values(case, cli, isolated):
    method, opt, pattern = FIELD_CASES[case]
    args = ("run", "-m", method, "-r", "4", *DIGITS, "--opt", opt)
    assert_refused(cli, isolated, Case(args, pattern))


def test_every_method_field_declares_its_range():
    """A numeric hyperparameter without a declared range (rbench.core.fields) would go to the
    optimiser unchecked; every default lies inside its own range."""
    undeclared, outside = [], []
    for name, method in declared_methods().items():
        hints = typing.get_type_hints(method.Config)
        default = method.Config()
        for f in dataclasses.fields(method.Config):
            kind, _ = _kind(hints[f.name])
            numeric = kind in (int, float) or typing.get_origin(kind) is tuple
            if not numeric:
                continue
            allowed = field_range(name, f)
            if allowed is None:
                undeclared.append(f"{name}.{f.name}")
                continue
            value = getattr(default, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if value is not None and not all(v in allowed for v in values):
                outside.append(f"{name}.{f.name}={value!r} not {allowed}")
    assert not undeclared, f"declare a range in rbench.core.fields for: {', '.join(undeclared)}"
    assert not outside, f"defaults outside their declared ranges: {'; '.join(outside)}"
    assert len(FIELD_CASES) >= 2 * len(declared_methods())


# ------------------------------------------------------------------ the real command


def test_the_real_command_prints_one_line_too(tmp_path):
    """One case through a real `rbench` process, its stderr as a user sees it (torch's warning
    about the pickle's protocol included, were it not silenced): a checkpoint carrying code."""
    code_pickle(tmp_path)
    env = {**os.environ, "HOME": str(tmp_path), "RBENCH_CACHE": str(tmp_path / "cache")}
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "rbench.cli", *RUN, "--dense-checkpoint", str(tmp_path / "evil.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "loaded safely" in lines[0], lines[0]
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists()


def test_a_field_declares_its_range_in_its_metadata():
    """How a new method or a plugin declares a field of its own: the metadata wins over the
    shared name's range, and make_config checks it before anything runs."""
    from dataclasses import dataclass, field

    from rbench.core.errors import RbenchError
    from rbench.core.fields import Range
    from rbench.core.registry import Method, MethodConfig, make_config

    @dataclass
    class Config(MethodConfig):
        lr: float = field(default=0.5, metadata={"range": "[0.1, 1)"})
        steps: int = field(default=3, metadata={"range": "[1, 10]"})

    class Own(Method):
        name, kind, citation = "own", "dense", "none"

    Own.Config = Config
    assert make_config(Own, {"lr": "0.1", "steps": "10"}).steps == 10
    for opts, message in (
        ({"lr": "0.05"}, r"--opt lr must be a finite number in \[0.1, 1\), got 0.05"),
        ({"lr": "1"}, r"in \[0.1, 1\)"),
        ({"steps": "11"}, r"--opt steps must be a finite number in \[1, 10\], got 11"),
    ):
        with pytest.raises(RbenchError, match=message):
            make_config(Own, opts)
    assert str(Range.of("(0, inf)")) == "> 0" and 0 not in Range.of("(0, inf)")
    with pytest.raises(ValueError, match="interval notation"):
        Range.of("0..1")
