"""The structure of compressed models: registered layer types and the masks baked into weights.

Factorised layers (Tucker-2, U S V^T, two-factor) and layers with dropped filters register
themselves with `register_layer` in their own modules (`rbench.layers` imports them all); a
compressed model's `structure` (a JSON-able {path: spec}) rebuilds it exactly from safetensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from rbench.core.budget import COMPRESSIBLE
from rbench.core.errors import RbenchError

CONV_GEOMETRY = ("kernel_size", "stride", "padding", "dilation", "padding_mode")


LAYER_TYPES: dict[str, type[nn.Module]] = {}


class SpecLayer(nn.Module):
    """Base of registered layers whose spec is their constructor's keyword arguments (JSON-able),
    so `from_spec(spec())` builds an empty layer of the same shapes."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self._spec = spec

    def spec(self) -> dict:
        return dict(self._spec)

    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module:
        return cls(**spec)


def register_layer(cls: type[nn.Module]) -> type[nn.Module]:
    """Register a layer type that replaces a Conv2d/Linear (factorised, or with filters dropped).
    It must offer `spec() -> dict` (JSON-able: shapes, ranks, conv settings) and
    `from_spec(spec) -> module` (a classmethod building it with empty weights); `SpecLayer` gives
    both."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def structure_of(model: nn.Module) -> dict[str, dict]:
    """{module path: {"type": ..., **spec}} for every registered layer in the model."""
    return {
        path: {"type": type(m).__name__, **m.spec()}
        for path, m in model.named_modules()
        if type(m).__name__ in LAYER_TYPES and isinstance(m, LAYER_TYPES[type(m).__name__])
    }


def rebuild(model: nn.Module, structure: dict[str, dict]) -> nn.Module:
    """Replace the modules at the structure's paths by empty registered layers of the recorded
    shapes, so that a saved state dict loads into the result."""
    for path, spec in sorted(structure.items(), key=lambda kv: kv[0].count(".")):
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in LAYER_TYPES:
            raise RbenchError(f"unknown layer type '{kind}' at '{path}' in a model structure")
        set_module(model, path, LAYER_TYPES[kind].from_spec(spec))
    return model


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def finalize(model: nn.Module) -> nn.Module:
    """Bake masks and parametrisations into plain tensors (zeros stay zeros): the form the harness
    counts, saves and evaluates."""
    for m in model.modules():
        if isinstance(m, COMPRESSIBLE) and prune.is_pruned(m):
            prune.remove(m, "weight")
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return model


def bias_free_layer(m: nn.Module, weight: torch.Tensor, groups: int | None = None) -> nn.Module:
    """A bias-free layer with `m`'s geometry carrying `weight`."""
    if isinstance(m, nn.Linear):
        op = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    else:
        g = m.groups if groups is None else groups
        geometry = {k: getattr(m, k) for k in CONV_GEOMETRY}
        op = nn.Conv2d(weight.shape[1] * g, weight.shape[0], groups=g, bias=False, **geometry)
    op.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    return op.to(weight.device)
