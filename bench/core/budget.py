"""What a method may spend and what it achieved: the budget, the one ratio function (design.md 3),
the MACs ratio, and the compute meter in AT-epochs (design.md 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rbench.core.errors import RbenchError

COMPRESSIBLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Budget:
    """Created by the harness, never by a method: the target ratio and the compute allowance."""

    ratio: float
    epochs: float  # adversarial-training epochs (AT-epochs) the method may spend

    @property
    def is_dense(self) -> bool:
        return self.ratio == 1


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of a model, by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE)}


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses, with any pruning mask applied. Only a real
    torch.nn.utils.prune hook counts: `weight_orig`/`weight_mask` attributes without one leave the
    forward pass on the dense `weight`, so that is what gets counted."""
    if _pruning_hook(module) and hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


def _pruning_hook(module: nn.Module) -> bool:
    from torch.nn.utils.prune import BasePruningMethod

    return any(
        isinstance(hook, BasePruningMethod) and hook._tensor_name == "weight"
        for hook in module._forward_pre_hooks.values()
    )


def stored_tensors(model: nn.Module) -> list[tuple[str, int, int]]:
    """(module path, stored elements, tensor elements) for every weight the model must store.

    Counted by the harness on the tensors themselves, whatever a method claims: nonzeros of the
    effective weight of each Conv2d/Linear (so masks count their survivors and factorised layers,
    built from smaller Conv2d/Linear, count their factors), plus the nonzeros of any other matrix
    or tensor parameter held directly by a custom module (a U S V^T layer's factors, say).
    Biases and normalisation parameters (1-d) are not counted; see `other_parameters`.
    """
    rows = []
    for path, module in model.named_modules():
        if isinstance(module, COMPRESSIBLE):
            w = effective_weight(module)
            rows.append((path, int(torch.count_nonzero(w)), w.numel()))
            continue
        if type(module).__name__ == "ParametrizationList":
            continue  # its `original` is counted through the owner's effective weight
        for name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2 and not name.endswith("_orig"):
                rows.append(
                    (f"{path}.{name}" if path else name, int(torch.count_nonzero(p)), p.numel())
                )
    return rows


def other_parameters(model: nn.Module) -> int:
    """Biases and normalisation parameters: reported beside the ratio, not counted in it."""
    return sum(p.numel() for p in model.parameters() if p.dim() < 2)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input, by torch.utils.flop_counter."""
    param = next(model.parameters())
    x = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    except RuntimeError as exc:
        # FlopCounterMode cannot trace torch.autograd.grad called inside a forward pass
        raise RbenchError(
            "cannot count the MACs of this model: its forward pass failed under "
            f"torch.utils.flop_counter ({str(exc).splitlines()[0][:160]}); a compressed model "
            "must be a plain forward computation (no autograd calls inside forward)"
        ) from None
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def measure_compression(
    dense: nn.Module, compressed: nn.Module, input_shape: tuple[int, ...]
) -> dict:
    """The compression the harness records: global ratio, MACs ratio and the per-layer table."""
    dense_layers = {p: m.weight.numel() for p, m in compressible_layers(dense).items()}
    n_dense = sum(dense_layers.values())
    per_layer = {p: {"layer": p, "dense": n, "stored": 0} for p, n in dense_layers.items()}
    for path, stored, _ in stored_tensors(compressed):
        owner = _owner(path, dense_layers)
        row = per_layer.setdefault(owner, {"layer": owner, "dense": 0, "stored": 0})
        row["stored"] += stored
    for row in per_layer.values():
        row["density"] = row["stored"] / row["dense"] if row["dense"] else None
    n_stored = sum(r["stored"] for r in per_layer.values())
    macs_dense, macs = count_macs(dense, input_shape), count_macs(compressed, input_shape)
    return {
        "n_dense": n_dense,
        "n_stored": n_stored,
        "ratio": n_dense / max(n_stored, 1),
        "other_parameters": other_parameters(compressed),
        "macs_dense": macs_dense,
        "macs": macs,
        "macs_ratio": macs_dense / max(macs, 1),
        "per_layer": list(per_layer.values()),
    }


def _owner(path: str, dense_paths: dict[str, int]) -> str:
    """The dense layer a stored tensor replaces: the longest dense path that prefixes it."""
    best = ""
    for d in dense_paths:
        if (path == d or path.startswith(d + ".")) and len(d) > len(best):
            best = d
    return best or path


def max_stored(n_dense: int, ratio: float, n_layers: int) -> int:
    """The most a model may store at `ratio`: floor(N_dense / ratio) plus one element of
    rounding slack per compressible layer (design.md 3)."""
    return math.floor(n_dense / ratio) + n_layers


def verify_ratio(report: dict, ratio: float, method: str) -> None:
    """Refuse a result whose measured compression is below the requested ratio."""
    n_layers = sum(1 for r in report["per_layer"] if r["dense"])
    limit = max_stored(report["n_dense"], ratio, n_layers)
    if report["n_stored"] > limit:
        raise RbenchError(
            f"method '{method}' returned a model that stores {report['n_stored']} weights, "
            f"measured ratio {report['ratio']:.3f} < requested {ratio:g} (at most {limit} allowed)"
        )


class ComputeMeter:
    """Counts forward-backward passes per sample made through ctx, in AT-epochs.

    One AT-epoch = one pass over the training set with the suite's training attack: PGD-k costs
    k + 1 forward-backward passes per sample. A method over its allowance by more than 5% is stopped.
    """

    tolerance = 0.05

    def __init__(self, n_train: int, attack_steps: int, limit_epochs: float | None = None) -> None:
        self.per_epoch = n_train * (attack_steps + 1)
        self.limit_epochs = limit_epochs
        self.passes = 0

    def charge(self, samples: int, passes_per_sample: int) -> None:
        self.passes += samples * passes_per_sample
        if self.limit_epochs is not None and self.used_epochs > self.limit_epochs * (
            1 + self.tolerance
        ):
            raise RbenchError(
                f"compute budget exceeded: {self.used_epochs:.2f} AT-epochs used of "
                f"{self.limit_epochs:g} allowed (+{self.tolerance:.0%} tolerance)"
            )

    @property
    def used_epochs(self) -> float:
        return self.passes / self.per_epoch

    def remaining_epochs(self) -> float:
        return float("inf") if self.limit_epochs is None else self.limit_epochs - self.used_epochs
