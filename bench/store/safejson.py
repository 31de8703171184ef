"""JSON files that may come from anyone (records, tuning records, baselines, sweep manifests),
read as plain data within limits that hold before parsing: a size limit, a nesting limit (a
record is 6 levels deep; a file of 100,000 open brackets would otherwise reach Python's recursion
limit in the parser or in whatever walks the result), no NaN/Infinity constants and no duplicate
keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from rbench.core.errors import RbenchError

MAX_BYTES = 16 * 1024 * 1024  # a real record is tens of kilobytes
MAX_DEPTH = 32  # a record nests 6 levels

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class UnsafeJSON(ValueError):
    """Text that is JSON but not plain data within the limits."""


def nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings, found without parsing."""
    bare = _STRING.sub('""', text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(bare, dtype=np.uint8).astype(np.int8)
    step = (
        (codes == ord("[")).astype(np.int32)
        + (codes == ord("{"))
        - (codes == ord("]"))
        - (codes == ord("}"))
    )
    return int(np.cumsum(step).max(initial=0))


def _no_constants(name: str):
    raise UnsafeJSON(f"the JSON constant {name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise UnsafeJSON(f"the key '{key}' appears twice in one object")
        out[key] = value
    return out


def parse_data(text: str, max_depth: int = MAX_DEPTH):
    """`json.loads` for untrusted text; raises UnsafeJSON or json.JSONDecodeError."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise UnsafeJSON(f"it nests {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except RecursionError:  # unreachable within max_depth; kept as a last guard
        raise UnsafeJSON("it nests too deep to parse") from None


def read_text_limited(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """A file's UTF-8 text, refused (ValueError) above `max_bytes`; OSError as raised."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise UnsafeJSON(f"file is {size} bytes, more than the {max_bytes} allowed")
    return Path(path).read_text(encoding="utf-8")


def read_data(path: str | Path, what: str, max_bytes: int = MAX_BYTES):
    """The JSON data of a file, or RbenchError naming `what` ('the tuning record') and why."""
    path = Path(path)
    try:
        return parse_data(read_text_limited(path, max_bytes))
    except OSError as exc:
        raise RbenchError(f"{what} '{path}' cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise RbenchError(f"{what} '{path}' is not UTF-8 text") from None
    except UnsafeJSON as exc:
        raise RbenchError(f"{what} '{path}' is not acceptable JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RbenchError(f"{what} '{path}' is not valid JSON ({exc})") from None
