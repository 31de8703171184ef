"""Model and optimiser state as flat tensor dicts for safetensors (never pickles), and loading of
user-supplied checkpoints (safetensors, or a state dict read with `weights_only=True`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from rbench.core.errors import RbenchError
from rbench.store.cache import CorruptArtifact, load_tensors
from rbench.store.interop import foreign_layout, unwrap


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


_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"  # torch.save's archive, and its legacy pickle format


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    return len(head) > 9 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{"


def _safe_torch_load(path: Path) -> object:
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise RbenchError(
                f"checkpoint '{path}' could not be loaded safely (weights_only=True): it holds "
                f"Python objects{what}, not only tensors, and rbench never runs a checkpoint's "
                "code; save model.state_dict() with torch.save, or a .safetensors file"
            ) from None
        raise RbenchError(
            f"checkpoint '{path}' is not a readable torch checkpoint "
            f"({type(exc).__name__}; truncated or not a torch.save file)"
        ) from None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A user's dense checkpoint: safetensors, or a torch state dict loaded with weights_only=True
    (so a pickle carrying code is refused, never executed). rbench's own cached models (keys
    `model.*`) and DataParallel ones (`module.*`) are accepted as they are, and so is the state
    dict inside a RobustBench-style container (rbench.store.interop.unwrap)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise RbenchError(f"checkpoint '{path}' is a folder, not a checkpoint file")
    if not path.is_file():
        raise RbenchError(f"checkpoint '{path}' does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        try:
            state = load_tensors(path)
        except CorruptArtifact as exc:
            raise RbenchError(f"checkpoint {exc}") from None
    elif head.startswith(_ZIP) or head.startswith(_PICKLE):
        state = unwrap(_safe_torch_load(path))  # RobustBench's {"state_dict": ...} and the like
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise RbenchError(f"checkpoint '{path}' is not a state dict of tensors")
    else:
        raise RbenchError(
            f"checkpoint '{path}' is neither a safetensors file nor a torch checkpoint "
            "(a zip archive or a pickle written by torch.save)"
        )
    if not state:
        raise RbenchError(f"checkpoint '{path}' holds no tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if all(k.startswith(("model.", "optim.")) for k in state):  # rbench's cache layout
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def fit_checkpoint(
    state: dict[str, torch.Tensor], model: nn.Module, normalization: str | None, source: str
) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint as a state dict of the suite's Classifier, and where its input
    normalisation came from ("checkpoint", "none" or "suite").

    The rule: a checkpoint of the whole Classifier (rbench's own: `normalize.mean/std` beside
    `net.*`) says how its inputs are normalised, and an explicit `normalization` must agree with
    it. A bare network (the keys of `net` alone, as other code saves them) says nothing, so the
    caller must choose: "none" for a network trained on [0, 1] inputs (an identity Normalize is
    put in front), "suite" for one trained on inputs normalised by the suite's mean and std."""
    own = model.state_dict()
    state = foreign_layout(state, set(own))  # RobustBench's WideResNet names (rbench.store.interop)
    norm_keys = [k for k in own if k.startswith("normalize.")]
    if norm_keys and all(k in state for k in norm_keys):
        if normalization is not None:
            target = _normalize_state(own, norm_keys, normalization)
            if not all(torch.allclose(state[k].float(), target[k].float()) for k in norm_keys):
                held = ", ".join(f"{k}={state[k].flatten().tolist()}" for k in norm_keys)
                raise RbenchError(
                    f"{source} carries its own input normalisation ({held}), which is not "
                    f"--input-normalization {normalization}; drop the option"
                )
        return state, "checkpoint"
    bare = (
        state
        if all(k.startswith("net.") for k in state)
        else {f"net.{k}": v for k, v in state.items()}
    )
    if not norm_keys or not set(bare) <= set(own):
        return state, "checkpoint"  # load_state says what does not fit
    if normalization is None:
        raise RbenchError(
            f"{source} holds a bare network that does not say how its inputs were normalised; "
            "pass --input-normalization none (trained on [0, 1] pixels) or suite (trained on "
            "pixels normalised by the suite's mean and std)"
        )
    return {**_normalize_state(own, norm_keys, normalization), **bare}, normalization


def _normalize_state(own: dict, keys: list[str], normalization: str) -> dict:
    if normalization == "suite":
        return {k: own[k] for k in keys}
    return {
        k: torch.zeros_like(own[k]) if k.endswith("mean") else torch.ones_like(own[k]) for k in keys
    }
