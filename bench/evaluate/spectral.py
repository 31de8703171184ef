"""Spectral diagnostics of a compressed model (design.md 6): per-layer spectra, the spectra of
convolution operators, a Lipschitz upper bound and an empirical local Lipschitz estimate.

Layers are named as in `rbench.core.budget.measure_compression`. Each gets the singular values of its
effective weight as a matrix (conv: C_out x C_in*k*k; factorised: the product of its factors; USV:
also the core S), the numerical rank (values > sigma_max * max(shape) * fp32 eps), the condition
number over the full spectrum (null: infinite, the matrix is numerically rank-deficient) and over
the numerical rank, and the stable rank ||W||_F^2/||W||_2^2.

Convolutions on the layer's real input size, by the FFT method of Sedghi, Gupta & Long (ICLR 2019):
the 2-D DFT block-diagonalises a circular convolution, so its singular values are those of the
C_out x C_in matrices sum_{a,b} K[:, :, a, b] w^(a u + b v), one per frequency (u, v). Stride s is
exact through a polyphase (space-to-depth) rewrite: a stride-s circular conv on an N grid is a
stride-1 one on the N/s grid with s*s*C_in input channels. Padding:
- circular, output size n/s: exact, every singular value (`exact: true`);
- zeros: the layer is (restriction) o (circular conv on the grid padded to n + 2p, rounded up to a
  multiple of s) o (zero embedding), so by interlacing each circular singular value bounds the
  layer's from above and sigma_max bounds its norm (`exact: false`; the gap between the two is
  studied by Delattre, Barthelemy & Allauzen 2024). reflect/replicate: no such bound.
`power_iteration` measures the layer's norm as the network applies it (<= sigma_max; = when exact).

Network: `lipschitz_bound_log10` is the log10 product of layer operator norms (the FFT bound for
convs, sigma_max for linears, BatchNorm scales in eval mode, 1/std of the input normalisation; a
residual block, a module with a `shortcut`, counts main + shortcut). It bounds the l2 Lipschitz
constant when `lipschitz_bound_rigorous`; a module the rules do not know clears that flag.
`local_lipschitz`: max over the points x of ||f(x+d) - f(x)|| / ||d||, d on a small l2 sphere found
by normalised gradient ascent on ||f(x+d) - f(x)||^2; x + d is not clamped to [0, 1].

Factorised layers: the effective weight from `as_dense()` (a bias-free Conv2d/Linear of the same
map), else composed from child Conv2d/Linear (one spatial conv at most) or probed (linear layers),
checked against forward; the core from `core_matrix()`, a square child `s` or a parameter `S`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _pair

from rbench.core.budget import COMPRESSIBLE, effective_weight, stored_tensors
from rbench.layers import LAYER_TYPES
from rbench.layers.base import bias_free_layer

RANK_TOL = torch.finfo(torch.float32).eps  # weights are fp32: below this they are numerically 0
POWER_ITERATIONS = 50
OPERATOR_QUANTILES = 33  # a conv operator's spectrum is kept as quantiles, not every value
LOCAL_RADIUS, LOCAL_STEPS = 1e-2, 10  # l2 radius in pixel units; gradient-ascent steps
KNOWN_CHAINS = {"Sequential", "Classifier", "ResNet18", "WideResNet"}  # children applied in order
KNOWN_RESIDUAL = {"BasicBlock", "WideBlock"}
ONE_LIPSCHITZ = (nn.ReLU, nn.ReLU6, nn.Tanh, nn.Hardtanh, nn.Sigmoid, nn.Flatten, nn.Identity)
ONE_LIPSCHITZ += (nn.Dropout, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def spectrum_stats(values: torch.Tensor, size: int, keep: bool = True) -> dict:
    """Summary of singular values (any order) of an operator whose larger side is `size`."""
    s = values.detach().double().flatten().sort(descending=True).values.cpu()
    smax, smin = float(s[0]), float(s[-1])
    rank = int((s > smax * size * RANK_TOL).sum()) if smax > 0 else 0
    out = {
        "sigma_max": _sig(smax),
        "sigma_min": _sig(smin),
        "condition_number": _sig(smax / smin) if rank == len(s) else None,  # else infinite
        "numerical_rank": rank,
        "condition_number_rank": _sig(smax / float(s[rank - 1])) if rank else None,
        "stable_rank": _sig(float((s**2).sum()) / smax**2) if smax > 0 else 0.0,
    }
    if keep:
        out["singular_values"] = [_sig(v) for v in s.tolist()]
    return out


def _svdvals(m: torch.Tensor) -> torch.Tensor:
    """Singular values of (a batch of) matrices, taken of the tall side (LAPACK is far faster)."""
    return torch.linalg.svdvals(m.mH if m.shape[-1] > m.shape[-2] else m)


def matrix_spectrum(weight: torch.Tensor) -> dict:
    """Spectrum of a weight as a matrix (a conv kernel reshaped to C_out x C_in*k*k)."""
    w = weight.detach().reshape(weight.shape[0], -1).double().cpu()
    return spectrum_stats(_svdvals(w), max(w.shape))


def _padding(conv: nn.Conv2d, dim: int) -> tuple[int, int]:
    """(before, after) padding of one spatial dim, for int and string ("same", "valid") paddings."""
    if isinstance(conv.padding, str):  # "valid", or "same" split as torch splits it
        total = 0 if conv.padding == "valid" else conv.dilation[dim] * (conv.kernel_size[dim] - 1)
        return (total // 2, total - total // 2)
    return (conv.padding[dim], conv.padding[dim])


def _full_kernel(conv: nn.Conv2d) -> torch.Tensor:
    """A grouped conv's kernel as an ordinary (block-diagonal) C_out x C_in kernel."""
    w, g = effective_weight(conv).detach(), conv.groups
    full = w.new_zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    o, c = conv.out_channels // g, conv.in_channels // g
    for i in range(g):
        full[i * o : (i + 1) * o, i * c : (i + 1) * c] = w[i * o : (i + 1) * o]
    return full


def conv_operator_spectrum(conv: nn.Conv2d, input_hw: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Every singular value of the circular strided convolution that equals the layer (circular
    padding, output n/s) or contains it (otherwise), and how the two relate."""
    kernel = _full_kernel(conv)  # real; the FFT makes it complex64 (fp32) or complex128 (fp64)
    exact, grid, offset = True, [], []
    for d in range(2):
        n, s = input_hw[d], conv.stride[d]
        before, after = _padding(conv, d)
        out = (n + before + after - conv.dilation[d] * (conv.kernel_size[d] - 1) - 1) // s + 1
        same = conv.padding_mode == "circular" and n % s == 0 and out == n // s
        exact &= same  # otherwise a restriction of the circular conv on the padded grid
        grid.append(n if same else math.ceil((n + before + after) / s) * s)
        offset.append(-before if same else 0)
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    mh, mw = grid[0] // sh, grid[1] // sw
    o, c, kh, kw = kernel.shape
    phases = kernel.new_zeros(o, c, sh, sw, mh, mw)  # polyphase components of the kernel
    for a in range(kh):
        th = a * dh + offset[0]
        for b in range(kw):
            tw = b * dw + offset[1]
            phases[:, :, th % sh, tw % sw, (th // sh) % mh, (tw // sw) % mw] += kernel[:, :, a, b]
    # a real kernel's symbols at (u, v) and (-u, -v) are conjugate: rfft2 computes half of them
    symbols = torch.fft.rfft2(phases).permute(4, 5, 0, 1, 2, 3).flatten(0, 1).flatten(-3)
    values = _svdvals(symbols).view(mh, -1, min(o, c * sh * sw))
    twice = torch.ones(values.shape[1], dtype=torch.long, device=values.device)
    twice[1 : (mw + 1) // 2] = 2  # these columns stand for their mirror images too
    values = values.repeat_interleave(twice, dim=1).flatten()
    bound = exact or conv.padding_mode in ("zeros", "circular")
    return values, {"grid": grid, "exact": exact, "upper_bound": bound}


def power_iteration(
    op: nn.Module, input_shape: tuple[int, ...], iterations: int = POWER_ITERATIONS, seed: int = 0
) -> float:
    """sigma_max of a bias-free linear module on inputs of `input_shape` by power iteration on
    A^T A (A^T by autograd): a lower estimate that converges to the operator norm."""
    param = next(op.parameters())
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *input_shape, generator=gen).to(param.device, param.dtype)
    v = v / v.norm()
    for _ in range(iterations):
        v.requires_grad_(True)
        (g,) = torch.autograd.grad(0.5 * op(v).pow(2).sum(), v)
        if g.norm() == 0:
            return 0.0
        v = (g / g.norm()).detach()
    with torch.no_grad():
        return float(op(v).norm())


def _owner_of(path: str, owners) -> str | None:
    """The innermost owner path that is `path` or one of its ancestors."""
    hits = [p for p in owners if p == "" or path == p or path.startswith(p + ".")]
    return max(hits, key=len, default=None)


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """Compressible layers by the dense layer's path: Conv2d/Linear, factorised layers (registered
    or offering `as_dense`), custom modules holding >= 2-d parameters; the outermost one owns."""

    owners: dict[str, nn.Module] = {}
    for path, m in model.named_modules():  # parents come before their children
        if _owner_of(path, owners) is not None:
            continue
        direct = path and any(p.dim() >= 2 for p in m.parameters(recurse=False))
        factorised = type(m).__name__ in LAYER_TYPES or callable(getattr(m, "as_dense", None))
        if isinstance(m, COMPRESSIBLE) or factorised or direct:
            owners[path] = m
    return owners


def _compose_chain(owner: nn.Module) -> nn.Module | None:
    """The one layer a chain of child Linear, or of child Conv2d with at most one spatial conv and
    the rest plain 1x1, computes (Tucker-2 and two-factor layers)."""
    layers = [m for m in owner.modules() if m is not owner and isinstance(m, COMPRESSIBLE)]
    weights = [effective_weight(m).detach() for m in layers]
    if layers and all(isinstance(m, nn.Linear) for m in layers):
        return bias_free_layer(layers[0], functools.reduce(lambda acc, w: w @ acc, weights))
    if not layers or not all(isinstance(m, nn.Conv2d) for m in layers):
        return None

    def plain(m: nn.Conv2d) -> bool:
        pad = _padding(m, 0) + _padding(m, 1)
        return m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and not any(pad)

    spatial = [i for i, m in enumerate(layers) if not plain(m)] or [0]
    if len(spatial) > 1:
        return None
    i = spatial[0]
    kernel, mats = _full_kernel(layers[i]), [w[:, :, 0, 0] for w in weights]
    eye = functools.partial(torch.eye, dtype=kernel.dtype, device=kernel.device)
    pre = functools.reduce(lambda acc, w: w @ acc, mats[:i], eye(layers[0].in_channels))
    post = functools.reduce(lambda acc, w: w @ acc, mats[i + 1 :], eye(kernel.shape[0]))
    return bias_free_layer(layers[i], torch.einsum("op,pqhw,qc->ochw", post, kernel, pre), groups=1)


def _equivalent(owner: nn.Module, x: torch.Tensor | None) -> nn.Module | None:
    """A bias-free Conv2d/Linear computing the owner's linear map, checked on a random input."""
    if isinstance(owner, COMPRESSIBLE):
        return bias_free_layer(owner, effective_weight(owner))

    def probe() -> nn.Module | None:  # a linear-like layer: the images of the basis vectors
        if x is None or x.dim() != 2:
            return None
        eye = torch.eye(x.shape[1], device=x.device, dtype=x.dtype)
        w = (owner(eye) - owner(torch.zeros_like(eye))).T
        return bias_free_layer(nn.Linear(1, 1), w)

    makers = [owner.as_dense] if callable(getattr(owner, "as_dense", None)) else []
    for make in [*makers, lambda: _compose_chain(owner), probe]:
        with torch.no_grad():
            if (op := make()) is not None and (x is None or _same_map(owner, op, x)):
                return op
    return None


def _same_map(owner: nn.Module, op: nn.Module, x: torch.Tensor) -> bool:
    z = torch.randn_like(x)
    want, got = owner(z) - owner(torch.zeros_like(x)), op.to(x.device)(z)
    return got.shape == want.shape and bool((got - want).norm() <= 1e-4 * (1 + want.norm()))


def _core(owner: nn.Module) -> torch.Tensor | None:
    """The r x r core of a U S V^T layer, if it has one."""
    if callable(getattr(owner, "core_matrix", None)):
        return owner.core_matrix()
    child = getattr(owner, "s", None)
    s = effective_weight(child) if isinstance(child, COMPRESSIBLE) else getattr(owner, "S", None)
    s = s.flatten(1) if isinstance(s, torch.Tensor) and s.dim() == 4 else s
    return s if isinstance(s, torch.Tensor) and s.dim() == 2 and s.shape[0] == s.shape[1] else None


def _keep_input(inputs: dict, path: str, _module, args, _out) -> None:
    inputs.setdefault(path, args[0].detach())  # returning None leaves the output alone


def _capture_inputs(model: nn.Module, owners: dict, input_shape: tuple[int, ...]) -> dict:
    """The input each owner sees on one forward pass of a zero image (its size is what counts)."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(functools.partial(_keep_input, inputs, p))
        for p, m in owners.items()
    ]
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    return inputs


def layer_diagnostics(path: str, owner: nn.Module, x: torch.Tensor | None, stored: int) -> dict:
    """One row of the per-layer table; `x` is an input of the layer's real size."""
    op = _equivalent(owner, x)
    row = {"layer": path, "type": type(owner).__name__, "stored": stored}
    if op is None:
        return {**row, "shape": None, "note": "effective weight unavailable"}
    w = effective_weight(op)
    row.update(shape=list(w.shape), density=_sig(stored / w.numel()), **matrix_spectrum(w))
    if (core := _core(owner)) is not None:
        row["core"] = {"shape": list(core.shape), **matrix_spectrum(core)}
    if isinstance(op, nn.Linear):
        row["operator_norm"] = row["sigma_max"]
    elif x is not None:
        values, info = conv_operator_spectrum(op, tuple(x.shape[-2:]))
        size = max(op.out_channels, op.in_channels * op.stride[0] * op.stride[1])  # per frequency
        stats = spectrum_stats(values, size, keep=False)
        levels = torch.linspace(1, 0, OPERATOR_QUANTILES, dtype=torch.float64)
        quantiles = torch.quantile(values.double().cpu(), levels).tolist()
        operator = {"input": list(x.shape[1:]), **info, "quantiles": [_sig(v) for v in quantiles]}
        operator.update({k: stats[k] for k in ("sigma_max", "sigma_min", "condition_number")})
        operator["power_iteration"] = _sig(power_iteration(op, tuple(x.shape[1:])))
        # reflect/replicate padding has no circular embedding: only the measured norm
        norm = operator["sigma_max" if info["upper_bound"] else "power_iteration"]
        row.update(operator=operator, operator_norm=norm)
    return row


def _lipschitz(module: nn.Module, path: str, norms: dict[str, float]) -> tuple[float, bool]:
    """Upper bound of a module's l2 Lipschitz constant, and whether every rule used is certain."""
    if path in norms:
        return norms[path], True
    if isinstance(module, _BatchNorm) and module.running_var is not None:
        scale = (module.running_var + module.eps).rsqrt()
        return float((scale * module.weight.detach().abs() if module.affine else scale).max()), True
    if type(module).__name__ == "Normalize":
        return float(1 / module.std.min()), True
    if isinstance(module, nn.MaxPool2d):  # an input lies in at most ceil(k/s)^2 windows
        (kh, kw), (sh, sw) = _pair(module.kernel_size), _pair(module.stride)
        return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw)), True
    if isinstance(module, (nn.LeakyReLU, nn.ELU)):
        return max(1.0, abs(getattr(module, "negative_slope", getattr(module, "alpha", 1)))), True
    if isinstance(module, ONE_LIPSCHITZ):
        return 1.0, True
    children, name = list(module.named_children()), type(module).__name__
    if not children:
        return 1.0, isinstance(module, nn.Sequential)  # empty: identity; else unknown, assumed 1
    bounds = {n: _lipschitz(c, f"{path}.{n}" if path else n, norms) for n, c in children}
    certain = all(ok for _, ok in bounds.values())
    if not hasattr(module, "shortcut"):
        return math.prod(b for b, _ in bounds.values()), certain and name in KNOWN_CHAINS
    main = math.prod(b for n, (b, _) in bounds.items() if n != "shortcut")
    pre = 1.0  # a pre-activation block's shortcut sees the normalisation before its first layer
    for n, c in children:
        if not isinstance(c, _BatchNorm):
            break
        pre *= max(1.0, bounds[n][0])
    skip = bounds["shortcut"][0] if "shortcut" in bounds else 1.0
    return main + pre * skip, certain and name in KNOWN_RESIDUAL


def local_lipschitz(
    model: nn.Module, x: torch.Tensor, radius: float = LOCAL_RADIUS, steps: int = LOCAL_STEPS
) -> torch.Tensor:
    """Per point, ||f(x+d) - f(x)|| / ||d|| maximised over the sphere ||d|| = radius by normalised
    gradient ascent (on a ReLU net's linear piece: power iteration on the Jacobian)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        fx = model(x)

    def to_sphere(d: torch.Tensor) -> torch.Tensor:
        norms = d.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (d.dim() - 1))
        return radius * d / norms

    d = to_sphere(torch.randn(x.shape, generator=gen).to(x.device, x.dtype))
    for _ in range(steps):
        d.requires_grad_(True)
        (g,) = torch.autograd.grad((model(x + d) - fx).pow(2).sum(), d)
        moved = g.flatten(1).norm(dim=1).view(-1, *[1] * (g.dim() - 1)) > 0
        d = torch.where(moved, to_sphere(g), d.detach())
    with torch.no_grad():
        return (model(x + d) - fx).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)


def diagnose(model: nn.Module, input_shape: tuple[int, ...], x: torch.Tensor | None = None) -> dict:
    """Spectral diagnostics of `model` (in eval mode) on inputs of `input_shape`; `x`: test points
    for the empirical local Lipschitz estimate. JSON-able; an infinite condition number is null."""
    was_training = model.training
    model.eval()
    try:
        owners = _owners(model)
        inputs = _capture_inputs(model, owners, tuple(input_shape))
        stored = dict.fromkeys(owners, 0)
        for path, count, _ in stored_tensors(model):
            if (owner := _owner_of(path, owners)) is not None:
                stored[owner] += count
        layers = [layer_diagnostics(p, m, inputs.get(p), stored[p]) for p, m in owners.items()]
        norms = {r["layer"]: r["operator_norm"] for r in layers if "operator_norm" in r}
        bound, rigorous = _lipschitz(model, "", norms)
        bounded = all(r.get("operator", {}).get("upper_bound", True) for r in layers)
        rigorous = rigorous and bounded and len(norms) == len(layers)
        summary = {"lipschitz_bound_log10": _sig(math.log10(bound)) if bound > 0 else None}
        summary.update(lipschitz_bound_rigorous=rigorous, **_condition_summary(layers))
        if x is not None and len(x):
            param = next(model.parameters())
            ratios = local_lipschitz(model, x.to(param.device, param.dtype))
            found = {"max": _sig(float(ratios.max())), "mean": _sig(float(ratios.mean()))}
            found.update(points=len(x), radius=LOCAL_RADIUS, steps=LOCAL_STEPS)
            summary["local_lipschitz"] = found
        return {"version": 1, "layers": layers, "summary": summary}
    finally:
        model.train(was_training)


def _condition_summary(layers: list[dict]) -> dict:
    """Geometric mean and max of the layers' condition numbers (null if one is infinite)."""
    out = {"rank_deficient_layers": sum(r.get("condition_number", 0) is None for r in layers)}
    for key in ("condition_number", "condition_number_rank"):
        values = [r.get(key) for r in layers if "sigma_max" in r]
        if values and None not in values:
            out[f"{key}_geomean"] = _sig(math.exp(sum(map(math.log, values)) / len(values)))
            out[f"{key}_max"] = _sig(max(values))
        elif values:
            out[f"{key}_geomean"] = out[f"{key}_max"] = None
    return out
