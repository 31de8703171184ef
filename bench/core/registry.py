"""The method interface and its registry: `Method`, the config dataclasses, `@register_method`.

Discovery (the files of `rbench.methods` and the entry-point group `rbench.methods`) lives in
`rbench.methods`, so the registry never imports its own registrants.

A method is a class with a name, a citation, a kind, a `Config` dataclass holding the paper's
defaults, and `compress(model, budget, ctx) -> nn.Module`. The harness builds the budget and ctx;
the method never sees the CLI, the evaluator or the leaderboard.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from rbench.core.errors import RbenchError, nearest
from rbench.core.fields import Range, check_number, field_range

KINDS = ("dense", "unstructured", "structured", "low-rank")


@dataclass
class MethodConfig:
    """Base of every method's hyperparameters. `variant` picks the training protocol:
    "harness" adapts the paper to the common adversarial protocol and budget; "paper" keeps the
    paper's own training so its published numbers can be checked."""

    variant: str = "harness"


@dataclass
class SGDConfig(MethodConfig):
    """The SGD settings most methods train with (the learning rates stay each method's own:
    they differ by phase and by paper). `Context.fit_sgd` reads them."""

    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int | None = None  # None: the suite's


class Method:
    name: ClassVar[str]
    kind: ClassVar[str]
    citation: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    variants: ClassVar[tuple[str, ...]] = ("harness",)
    # paper-native robustness metrics the evaluator adds to the record (see rbench.evaluate.native)
    native_metrics: ClassVar[tuple[str, ...]] = ()
    # the config fields that hold the fine-tuning rate, set together by `rbench tune` (None: the
    # field "lr" where the config has one, else nothing to tune)
    tuned: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def default_rate(cls, suite) -> float | None:
        """The fine-tuning rate the harness variant uses when none is set: the tuned field's
        default, or the suite's `finetune_lr` where that default is None."""
        fields = cls.tuned_fields()
        if not fields:
            return None
        default = getattr(cls.Config(), fields[0])
        return suite.finetune_lr if default is None else default

    @classmethod
    def tuned_fields(cls) -> tuple[str, ...]:
        if cls.tuned is not None:
            return cls.tuned
        names = {f.name for f in dataclasses.fields(cls.Config)}
        return ("lr",) if "lr" in names else ()

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def check(self, model: nn.Module, budget) -> None:
        """Raise RbenchError, before any training, if this method cannot reach `budget` on a model
        of this architecture (`model` is untrained). The default accepts everything."""

    def compress(self, model: nn.Module, budget, ctx) -> nn.Module:
        raise NotImplementedError

    def finetune_lr(self, ctx, configured: float | None, paper: float) -> float:
        """The fine-tuning learning rate: the configured one, else the paper's in the paper
        variant, else the suite's `finetune_lr` (the common protocol's rate for every method)."""
        if configured is not None:
            return configured
        return (
            paper
            if getattr(self.config, "variant", "harness") == "paper"
            else ctx.suite.finetune_lr
        )

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry under `cls.name`."""
    for attr in ("name", "kind", "citation"):
        if not getattr(cls, attr, None):
            raise TypeError(f"method class {cls.__name__} needs a '{attr}'")
    if cls.kind not in KINDS:
        raise TypeError(f"method '{cls.name}': kind must be one of {KINDS}")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)):
        raise TypeError(f"method '{cls.name}': Config must be a dataclass deriving MethodConfig")
    existing = METHODS.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"method name '{cls.name}' is registered twice")
    METHODS[cls.name] = cls
    return cls


def _number(value: str, kind: type, what: str, allowed: Range | None):
    try:
        number = kind(value)
    except ValueError:
        article = "an integer" if kind is int else "a float"
        raise RbenchError(f"{what}={value}: expected {article}") from None
    check_number(number, allowed, what, value)
    return number


def _coerce(value: str, annotation, key: str, allowed: Range | None = None):
    """`--opt key=value` as the field's type, within its declared range (rbench.core.fields)."""
    what = f"--opt {key}"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise RbenchError(f"{what}={value}: choose one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value.lower() == "none":
            return None
        return _coerce(value, args[0], key, allowed)
    if origin is tuple:
        kinds = typing.get_args(annotation)
        parts = [p.strip() for p in value.split(",")]
        if kinds[-1] is not Ellipsis and len(parts) != len(kinds):
            raise RbenchError(f"{what}={value}: expected {len(kinds)} comma-separated values")
        kinds = [kinds[0]] * len(parts) if kinds[-1] is Ellipsis else kinds
        return tuple(_coerce(p, k, key, allowed) for p, k in zip(parts, kinds, strict=True))
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise RbenchError(f"{what}={value}: expected a bool (true or false)")
    if annotation in (int, float):
        return _number(value, annotation, what, allowed)
    if annotation is str:
        if len(value) > 200 or not value.isprintable():
            raise RbenchError(f"{what}: expected a short printable text")
        return value
    raise RbenchError(f"{what}: a field of type {annotation} cannot be set from the command line")


def make_config(method: type[Method], opts: dict[str, str]) -> MethodConfig:
    """The method's Config with `--opt key=value` overrides, each checked against the field's
    type and declared range (rbench.core.fields) before anything runs."""
    fields = {f.name: f for f in dataclasses.fields(method.Config)}
    hints = typing.get_type_hints(method.Config)
    values = {}
    for key, raw in opts.items():
        if key not in fields:
            raise RbenchError(
                f"method '{method.name}' has no option '{key}'{nearest(key, list(fields))}; "
                f"its options are {', '.join(fields)}"
            )
        values[key] = _coerce(raw, hints[key], key, field_range(method.name, fields[key]))
    config = method.Config(**values)
    if config.variant not in method.variants:
        raise RbenchError(
            f"method '{method.name}' has no variant '{config.variant}'; "
            f"choose {', '.join(method.variants)}"
        )
    return config


def nondefault(config: MethodConfig) -> dict:
    """The fields that differ from the defaults: what a cache key hashes (OpenLTH's rule, so a new
    option with a no-op default keeps old results valid)."""
    default = type(config)()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }
