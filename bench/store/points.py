"""Per-point results in records: which evaluated test points were correct under each attack.

A record keeps, for its `n_eval` evaluation points (in the order of the recorded ids), one bit per
point and attack, packed eight to a byte with the first point in the lowest bit of the first
byte, then base64. 1,000 points take 168 characters per attack, so records stay small, and two
entries evaluated on the same ids can be compared point by point (paired tests, rbench.report).
"""

from __future__ import annotations

import base64
import binascii
import re

import numpy as np
import torch

from rbench.core.errors import RbenchError

ENCODING = "bits-lsb0-base64"
POINT_KINDS = ("clean", "pgd", "autoattack")
BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def encoded_length(n: int) -> int:
    """Characters of the base64 text of n bits."""
    return 4 * (((n + 7) // 8 + 2) // 3)


def encode_points(correct: torch.Tensor | np.ndarray) -> str:
    bits = np.asarray(torch.as_tensor(correct).cpu().bool().numpy(), dtype=bool)
    return base64.b64encode(np.packbits(bits, bitorder="little").tobytes()).decode("ascii")


def decode_points(text: str, n: int) -> np.ndarray:
    """The n booleans of an encoded bit string; RbenchError when it is not exactly n bits."""
    if not isinstance(text, str) or len(text) != encoded_length(n) or not BASE64.match(text):
        raise RbenchError(f"per-point bits are not the base64 of {n} points")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RbenchError(f"per-point bits are not the base64 of {n} points") from None
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise RbenchError("per-point bits set beyond the last evaluated point")
    return bits[:n].astype(bool)


def points_entry(n: int, correct: dict[str, torch.Tensor]) -> dict:
    """The record's `metrics.points`: the encoding, the number of points and one bit string per
    attack (each tensor holds the n evaluated points in id order)."""
    for kind, tensor in correct.items():
        if len(tensor) != n:
            raise RbenchError(f"per-point '{kind}' has {len(tensor)} points, expected {n}")
    return {"encoding": ENCODING, "n": n, **{k: encode_points(v) for k, v in correct.items()}}


def record_points(record: dict) -> dict[str, np.ndarray] | None:
    """{attack: bool array over the evaluated points} of a record, or None for a record made
    before per-point results were kept."""
    entry = record.get("metrics", {}).get("points")
    if not entry:
        return None
    n = entry["n"]
    return {k: decode_points(entry[k], n) for k in POINT_KINDS if k in entry}
