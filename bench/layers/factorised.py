"""Factorised layers that really are smaller and faster, and the low-rank math behind them.

Layers (registered with `rbench.layers.base.register_layer`; each is made of plain nn.Conv2d/nn.Linear
children, so the harness's count of stored weights is exactly the formula of design.md 3):
- `Tucker2Conv`: 1x1 conv (I -> r2, U2^T), k x k conv (r2 -> r1, core G, the original stride,
  padding and dilation), 1x1 conv (r1 -> O, U1, the original bias): O*r1 + I*r2 + r1*r2*k*k.
- `USVLinear`, `USVConv`: W = U S V^T with a full r x r core S: r*(n + m) + r*r.
- `LowRankLinear`: W = A B^T as two linear layers: r*(n + m).
Every layer has `spec()` (JSON-able shapes, ranks and conv settings), `from_spec(spec)` (empty
weights of those shapes, for `rbench.layers.base.rebuild`) and `dense_weight()` (the product).

Math: Tucker-2 projection (HOSVD, optional HOOI sweeps; De Lathauwer et al. 2000), truncated SVD,
`factorise` (a model's layers at given ranks), BatchNorm re-estimation. Rank selection (costs
P_l(r), closed forms, the global greedy) is `rbench.layers.ranks`; the ADMM loop is `rbench.train.admm`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from rbench.core.errors import RbenchError
from rbench.layers.base import SpecLayer, register_layer, set_module

# ------------------------------------------------------------------------------ layers


def conv_settings(conv: nn.Conv2d) -> dict:
    if conv.groups != 1:
        raise RbenchError(
            "grouped or depthwise convolutions cannot be factorised or filter-pruned; keep them dense"
        )
    padding = conv.padding if isinstance(conv.padding, str) else list(conv.padding)
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": padding,
        "dilation": list(conv.dilation),
        "padding_mode": conv.padding_mode,
        "bias": conv.bias is not None,
    }


def spatial_settings(s: dict) -> dict:
    padding = s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"])
    return {
        "kernel_size": tuple(s["kernel_size"]),
        "stride": tuple(s["stride"]),
        "padding": padding,
        "dilation": tuple(s["dilation"]),
        "padding_mode": s["padding_mode"],
    }


@register_layer
class Tucker2Conv(SpecLayer):
    """W ~= G x_1 U1 x_2 U2 run as 1x1 -> k x k -> 1x1 convolutions."""

    def __init__(self, ranks: list[int], **conv: object) -> None:
        super().__init__({"ranks": list(ranks), **conv})
        r1, r2 = ranks
        self.first = nn.Conv2d(conv["in_channels"], r2, 1, bias=False)
        self.core = nn.Conv2d(r2, r1, bias=False, **spatial_settings(conv))
        self.last = nn.Conv2d(r1, conv["out_channels"], 1, bias=conv["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, ranks: tuple[int, int], sweeps: int = 0) -> Tucker2Conv:
        layer = cls(list(ranks), **conv_settings(conv)).to(conv.weight.device)
        core, u1, u2 = tucker2(conv.weight, ranks, sweeps)
        layer.first.weight.copy_(u2.T[:, :, None, None])
        layer.core.weight.copy_(core)
        layer.last.weight.copy_(u1[:, :, None, None])
        if conv.bias is not None:
            layer.last.bias.copy_(conv.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        u1, u2 = self.last.weight[:, :, 0, 0], self.first.weight[:, :, 0, 0].T
        return torch.einsum("abkl,oa,ib->oikl", self.core.weight, u1, u2)


@register_layer
class USVConv(SpecLayer):
    """W = U S V^T on the conv matrix (O x I*k*k): r filters V^T, then 1x1 convs S and U."""

    def __init__(self, rank: int, **conv: object) -> None:
        super().__init__({"rank": rank, **conv})
        self.v = nn.Conv2d(conv["in_channels"], rank, bias=False, **spatial_settings(conv))
        self.s = nn.Conv2d(rank, rank, 1, bias=False)
        self.u = nn.Conv2d(rank, conv["out_channels"], 1, bias=conv["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.s(self.v(x)))

    def dense_weight(self) -> torch.Tensor:
        u, s = self.u.weight[:, :, 0, 0], self.s.weight[:, :, 0, 0]
        return torch.einsum("oa,ab,bikl->oikl", u, s, self.v.weight)


@register_layer
class USVLinear(SpecLayer):
    """W = U S V^T as three linear layers (V^T, S, U with the bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(
            {"in_features": in_features, "out_features": out_features, "rank": rank, "bias": bias}
        )
        self.v = nn.Linear(in_features, rank, bias=False)
        self.s = nn.Linear(rank, rank, bias=False)
        self.u = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.s(self.v(x)))

    def dense_weight(self) -> torch.Tensor:
        return self.u.weight @ self.s.weight @ self.v.weight


@register_layer
class LowRankLinear(SpecLayer):
    """W = A B^T as two linear layers (B^T, then A with the bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(
            {"in_features": in_features, "out_features": out_features, "rank": rank, "bias": bias}
        )
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        n, m = linear.weight.shape
        layer = cls(m, n, rank, linear.bias is not None).to(linear.weight.device)
        u, s, v = truncated_svd(linear.weight, rank)
        root = s.sqrt()  # split the spectrum evenly so neither factor dominates fine-tuning
        layer.first.weight.copy_((v * root).T)
        layer.second.weight.copy_(u * root)
        if linear.bias is not None:
            layer.second.bias.copy_(linear.bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight


@torch.no_grad()
def usv_layer(
    module: nn.Module, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, bias: bool | None = None
) -> USVLinear | USVConv:
    """A U S V^T layer replacing `module` (Linear, or Conv2d seen as O x I*k*k) with the given
    factors (U n x r, S r x r, V m x r); keeps the module's bias, or adds a zero one if `bias`."""
    rank = s.shape[0]
    has_bias = module.bias is not None if bias is None else bias
    if isinstance(module, nn.Linear):
        n, m = module.weight.shape
        layer = USVLinear(m, n, rank, has_bias)
        layer.v.weight.copy_(v.T)
        layer.s.weight.copy_(s)
        layer.u.weight.copy_(u)
    else:
        layer = USVConv(rank, **{**conv_settings(module), "bias": has_bias})
        layer.v.weight.copy_(v.T.reshape(rank, *module.weight.shape[1:]))
        layer.s.weight.copy_(s[:, :, None, None])
        layer.u.weight.copy_(u[:, :, None, None])
    if has_bias:
        src = module.bias if module.bias is not None else torch.zeros(layer.u.bias.shape)
        layer.u.bias.copy_(src)
    return layer.to(module.weight.device)


# ------------------------------------------------------------------------------ projections


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-`mode` unfolding: that axis first, every other axis flattened."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def _leading(matrix: torch.Tensor, r: int) -> torch.Tensor:
    """Top-r left singular vectors, from the eigenvectors of the smaller Gram matrix in float64:
    much faster than LAPACK's SVD with vectors on a CPU (docs/findings.md, "harness")."""
    a = matrix.double()
    if a.shape[0] > a.shape[1]:
        q, rr = torch.linalg.qr(a)
        return q @ _leading(rr, r)
    _, vectors = torch.linalg.eigh(a @ a.T)
    return vectors.flip(1)[:, :r]


def tucker2(
    weight: torch.Tensor, ranks: tuple[int, int], sweeps: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 over the two channel modes of an O x I x kh x kw kernel: (core r1 x r2 x kh x kw,
    U1 O x r1, U2 I x r2) by HOSVD, then `sweeps` HOOI sweeps. Computed in float64."""
    w = weight.detach().double()
    r1, r2 = ranks
    u1, u2 = _leading(unfold(w, 0), r1), _leading(unfold(w, 1), r2)
    for _ in range(sweeps):
        u1 = _leading(unfold(torch.einsum("oikl,ib->obkl", w, u2), 0), r1)
        u2 = _leading(unfold(torch.einsum("oikl,oa->aikl", w, u1), 1), r2)
    core = torch.einsum("oikl,oa,ib->abkl", w, u1, u2)
    return core.to(weight.dtype), u1.to(weight.dtype), u2.to(weight.dtype)


def tucker2_project(weight: torch.Tensor, ranks: tuple[int, int], sweeps: int = 0) -> torch.Tensor:
    """The nearest (HOSVD/HOOI) tensor of multilinear rank <= ranks over the channel modes."""
    core, u1, u2 = tucker2(weight.double(), ranks, sweeps)
    return torch.einsum("abkl,oa,ib->oikl", core, u1, u2).to(weight.dtype)


def truncated_svd(matrix: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U n x r, s r, V m x r) of the best rank-r approximation (float64 inside)."""
    a, dtype = matrix.detach().double(), matrix.dtype
    if a.shape[0] > a.shape[1]:
        v, s, u = truncated_svd(a.T, r)
        return u.to(dtype), s.to(dtype), v.to(dtype)
    u = _leading(a, r)
    v, rr = torch.linalg.qr(a.T @ u)  # a^T U = V S, so Q = V and R = S up to column signs
    sign = torch.diagonal(rr).sign().masked_fill_(torch.diagonal(rr) == 0, 1)
    return u.to(dtype), (torch.diagonal(rr) * sign).to(dtype), (v * sign).to(dtype)


def svd_project(weight: torch.Tensor, r: int) -> torch.Tensor:
    """Best rank-r approximation of a weight seen as a matrix (convs as O x I*k*k)."""
    u, s, v = truncated_svd(weight.reshape(weight.shape[0], -1), r)
    return ((u * s) @ v.T).reshape(weight.shape)


def project_weight(module: nn.Module, ranks: tuple[int, ...], sweeps: int = 0) -> torch.Tensor:
    """The projection `factorise` stores for this layer at these ranks."""
    if isinstance(module, nn.Linear):
        return svd_project(module.weight, ranks[0])
    return tucker2_project(module.weight, (ranks[0], ranks[-1]), sweeps)


def factorise(
    model: nn.Module, ranks: dict[str, tuple[int, ...]], sweeps: int = 0, project: bool = True
) -> nn.Module:
    """Replace each named layer by its factorised form at the given ranks (in place): linear ->
    LowRankLinear (r,), k x k conv -> Tucker2Conv (r1, r2), 1x1 conv -> Tucker2Conv (r, r).
    `project=False` leaves the factors randomly initialised (shapes only: counting, latency)."""
    for path, r in ranks.items():
        module = model.get_submodule(path)
        if isinstance(module, nn.Linear):
            n, m = module.weight.shape
            layer = (
                LowRankLinear.from_linear(module, r[0])
                if project
                else LowRankLinear(m, n, r[0], module.bias is not None)
            )
        elif project:
            layer = Tucker2Conv.from_conv(module, (r[0], r[-1]), sweeps)
        else:
            layer = Tucker2Conv([r[0], r[-1]], **conv_settings(module))
        set_module(model, path, layer.to(module.weight.device))
    return model


# ------------------------------------------------------------------------------ BatchNorm


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics as plain averages over `inputs` (stale
    after a decomposition, methods.md 4(f)). Returns the number of BatchNorm layers reset."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in inputs:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return len(norms)
