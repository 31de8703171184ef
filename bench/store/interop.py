"""Dense checkpoints from other code bases, as the state dicts of rbench's architectures.

- Containers: RobustBench's model files and most training scripts save `{"state_dict": ...}`
  or `{"model_state_dict": ...}` (with the epoch, the optimiser, ... beside it); the state dict
  inside is what is loaded (`unwrap`). DataParallel's `module.` prefix is dropped by
  rbench.store.checkpoint.read_checkpoint.
- Key layouts (`foreign_layout`): RobustBench's WideResNet (the TRADES code: `block1.layer.0.`,
  `convShortcut`, the final `bn1`) is rbench's `wrn<depth>-<k>` under other names: the same
  pre-activation blocks, the shortcut on the activated input where the width changes, global
  average pooling (RobustBench's 8x8 pool on 32x32 inputs) and `fc`. The keys are renamed when,
  and only when, the renamed set is exactly the network's; the unused `sub_block1` some TRADES
  checkpoints carry is dropped. RobustBench's CIFAR ResNet-18 already has rbench's `resnet18`
  names, and a timm state dict has the names of `timm:<name>` (the suite's architecture), so
  both load as they are.
Either way the file holds a bare network, so `--input-normalization` must say whether it was
trained on [0, 1] pixels (RobustBench's models: `none`) or on normalised ones (`suite`).
"""

from __future__ import annotations

import re

import torch

CONTAINERS = ("state_dict", "model_state_dict")
_WRN = (
    (re.compile(r"^(block\d+)\.layer\.(\d+)\."), r"\1.\2."),
    (re.compile(r"\.convShortcut\."), ".shortcut."),
    (re.compile(r"^bn1\."), "bn."),
)
_UNUSED = ("sub_block1.",)


def unwrap(checkpoint):
    """The state dict a checkpoint container holds (`state_dict`, else `model_state_dict`);
    anything else unchanged (a state dict, or what the caller then refuses)."""
    if not isinstance(checkpoint, dict) or all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint
    for key in CONTAINERS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _wrn_name(key: str) -> str:
    for pattern, replacement in _WRN:
        key = pattern.sub(replacement, key)
    return key


def foreign_layout(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """`state` with a known foreign layout's keys renamed to rbench's, when that makes them
    exactly the model's (`own`: the Classifier's keys) or its network's (`net.` dropped);
    otherwise `state` unchanged, for the loader to say what does not fit."""
    net = {k[len("net.") :] for k in own if k.startswith("net.")}
    if set(state) <= own or set(state) <= net:
        return state
    kept = {k: v for k, v in state.items() if not k.startswith(_UNUSED)}
    renamed = {_wrn_name(k): v for k, v in kept.items()}
    if len(renamed) == len(kept) and set(renamed) in (net, own):
        return renamed
    return state
