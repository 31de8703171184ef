"""What a record says about where it was made: package versions, device, git commit, and the
provenance of the methods' code (installed plugin packages with their versions, in-tree method
files not committed to git with their sha256, and the file of the method that ran)."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rbench import __version__
from rbench.store.cache import sha256_file


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_lines(folder: Path, *args: str) -> list[str] | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.splitlines() if out.returncode == 0 else None


def uncommitted_sources(folder: Path) -> dict[str, str] | None:
    """{file: sha256} of the method files under `folder` that differ from the git commit
    (modified, staged or untracked), or None where git cannot tell (no git, not a checkout)."""
    changed = _git_lines(folder, "diff", "--name-only", "--relative", "HEAD", "--", ".")
    untracked = _git_lines(folder, "ls-files", "--others", "--exclude-standard", "--", ".")
    if changed is None or untracked is None:
        return None
    names = sorted({n for n in changed + untracked if n.endswith(".py") and (folder / n).is_file()})
    return {n: sha256_file(folder / n) for n in names}


def method_provenance(method_cls=None) -> dict:
    """Where the registered methods' code came from: every installed package that registered a
    method through the `rbench.methods` entry points (with its version), the sha256 of every
    in-tree method file not committed to git, and the file of the method that ran."""
    import importlib.util
    import inspect
    from importlib.metadata import entry_points

    plugins = []
    for ep in entry_points(group="rbench.methods"):
        dist = getattr(ep, "dist", None)
        plugins.append(
            {
                "method": ep.name,
                "entry_point": ep.value,
                "package": dist.metadata["Name"] if dist is not None else None,
                "version": dist.version if dist is not None else None,
            }
        )
    spec = importlib.util.find_spec("rbench.methods")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    out = {
        "plugins": sorted(plugins, key=lambda p: p["method"]),
        "uncommitted": uncommitted_sources(folder) if folder else None,
    }
    if method_cls is not None:
        try:
            source = Path(inspect.getfile(method_cls))
            out["ran"] = {"module": method_cls.__module__, "sha256": sha256_file(source)}
        except (OSError, TypeError):  # defined where no file holds it
            out["ran"] = {"module": method_cls.__module__, "sha256": None}
    return out


def environment(device, method_cls=None) -> dict:
    import torch

    dev = str(device)
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    return {
        "rbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _pkg("torchvision"),
        "pyautoattack": _pkg("pyautoattack"),
        "foolbox": _pkg("foolbox"),
        "numpy": _pkg("numpy"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": dev,
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
        "methods": method_provenance(method_cls),
    }
