"""Physically smaller layers for structured pruning: a Conv2d or Linear whose pruned filters
(output channels, or rows) are gone from storage and from the computation.

`KeptFilters` holds only the kept filters and computes only them, then places their outputs among
zeros at the layer's full width and adds the full bias, so it computes exactly what the masked
layer did (a pruned filter's output is its bias alone) while the MACs count, made by
torch.utils.flop_counter on the real tensors, drops with the filters. The next layer is left as
it is: the layer's output keeps its width, so the change is local and safe in any architecture
(residual connections included). Registered with `rbench.layers.base.register_layer`, so a saved model
rebuilds from its structure.
"""

from __future__ import annotations

import torch
from torch import nn

from rbench.core.budget import compressible_layers
from rbench.layers.base import SpecLayer, bias_free_layer, finalize, register_layer, set_module
from rbench.layers.factorised import conv_settings, spatial_settings


@register_layer
class KeptFilters(SpecLayer):
    """The kept filters of a Conv2d (`conv` settings) or Linear (`in_features`, `out_features`)."""

    def __init__(self, kept: list[int], bias: bool = True, **layer: object) -> None:
        super().__init__({"kept": list(kept), "bias": bias, **layer})
        if "in_channels" in layer:
            self.width = int(layer["out_channels"])
            conv = spatial_settings(layer)
            self.layer = nn.Conv2d(layer["in_channels"], len(kept), bias=False, **conv)
        else:
            self.width = int(layer["out_features"])
            self.layer = nn.Linear(int(layer["in_features"]), len(kept), bias=False)
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.long))
        self.register_parameter("bias", nn.Parameter(torch.zeros(self.width)) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        out = y.new_zeros(y.shape[0], self.width, *y.shape[2:]).index_copy(1, self.kept, y)
        if self.bias is None:
            return out
        return out + self.bias.view(1, -1, *([1] * (y.dim() - 2)))

    def dense_weight(self) -> torch.Tensor:
        """The full-width weight: the kept filters in place, zeros elsewhere."""
        w = self.layer.weight
        return w.new_zeros(self.width, *w.shape[1:]).index_copy(0, self.kept, w)

    @torch.no_grad()
    def as_dense(self) -> nn.Module:
        """A bias-free layer of the original shape computing the same linear map (diagnostics)."""
        return bias_free_layer(self.layer, self.dense_weight())

    @classmethod
    @torch.no_grad()
    def from_layer(cls, module: nn.Conv2d | nn.Linear, kept: list[int]) -> KeptFilters:
        if isinstance(module, nn.Conv2d):
            settings = conv_settings(module)
        else:
            settings = {"in_features": module.in_features, "out_features": module.out_features}
        settings["bias"] = module.bias is not None
        layer = cls(kept, **settings).to(module.weight.device)
        layer.layer.weight.copy_(module.weight[kept])
        if module.bias is not None:
            layer.bias.copy_(module.bias)
        return layer


def drop_pruned_filters(model: nn.Module) -> dict[str, int]:
    """Bake the masks, then replace every Conv2d/Linear that has all-zero filters by a
    `KeptFilters` of its other filters. Returns {layer path: filters dropped}."""
    finalize(model)
    dropped = {}
    for path, module in compressible_layers(model).items():
        if getattr(module, "groups", 1) != 1:
            continue  # a grouped conv's filters cannot be dropped one by one: stays masked
        alive = module.weight.detach().flatten(1).ne(0).any(1)
        if bool(alive.all()) or not bool(alive.any()):
            continue  # nothing to drop, or nothing to keep (left for the ratio count to judge)
        kept = alive.nonzero().flatten().tolist()
        set_module(model, path, KeptFilters.from_layer(module, kept))
        dropped[path] = int((~alive).sum())
    return dropped
