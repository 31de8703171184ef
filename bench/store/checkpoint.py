"""Model and optimiser state as flat tensor dicts for safetensors (never pickles), and loading of
user-supplied checkpoints (safetensors, or a state dict read with `weights_only=True`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rbench.core.errors import RbenchError
from rbench.store.cache import CorruptArtifact, load_tensors


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state split into tensors and a JSON-able rest (param groups, scalar state)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `model.*` tensors into the model; a mismatch is a clear error, not a traceback."""
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state(model, state, source)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
            f"expected {tuple(own[wrong[0]].shape)}"
        )
        raise RbenchError(f"{source} does not fit this suite's architecture ({detail})")
    model.load_state_dict(state)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A user's dense checkpoint: safetensors, or a torch state dict loaded with weights_only=True
    (so a pickle carrying code is refused, never executed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RbenchError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        try:
            state = load_tensors(path)
        except CorruptArtifact as exc:
            raise RbenchError(f"checkpoint {exc}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RbenchError(
                f"checkpoint '{path}' could not be loaded safely (weights_only=True): {first[:200]}"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise RbenchError(f"checkpoint '{path}' is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def strip_model_prefix(state: dict, model: nn.Module) -> dict:
    """Accept state dicts saved from the full Classifier or from its bare network."""
    own = model.state_dict()
    if set(state) <= set(own):
        return state
    prefixed = {f"net.{k}": v for k, v in state.items()}
    missing_norm = {k: own[k] for k in own if k.startswith("normalize.")}
    return {**missing_norm, **prefixed} if set(prefixed) <= set(own) else state
