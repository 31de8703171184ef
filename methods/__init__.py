"""Compression methods, one file each, registered with `@register_method` (see CONTRIBUTING.md).

`load_methods` is the one place that discovers them: every module of this package whose name does
not start with `_`, and every entry point of the group `rbench.methods` (external packages).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from rbench.core.errors import RbenchError, nearest
from rbench.core.registry import METHODS, Method, register_method

_loaded = False


def load_methods() -> dict[str, type[Method]]:
    """Import every module of `rbench.methods` and every `rbench.methods` entry point."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"rbench.methods.{info.name}")
        for ep in entry_points(group="rbench.methods"):
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken plugin must not take rbench down with it
                raise RbenchError(
                    f"the method plugin '{ep.name}' ({ep.value}) failed to import: {exc}"
                ) from None
            if isinstance(loaded, type) and issubclass(loaded, Method):
                register_method(loaded)
        _loaded = True
    return METHODS


def get_method(name: str) -> type[Method]:
    methods = load_methods()
    if name not in methods:
        raise RbenchError(f"unknown method '{name}'{nearest(name, sorted(methods))}")
    return methods[name]
