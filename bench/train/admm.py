"""ADMM for training under a per-tensor constraint W in S (Boyd et al. 2011; the pruning form of
Zhang et al. ECCV 2018, used robustly by Ye et al. ICCV 2019 and by CSTAR, Phan et al. AAAI 2023).

The constrained problem min_W L(W) s.t. W_l in S_l is split with an auxiliary Z_l in S_l and a
scaled dual U_l:

    W-step  a few SGD epochs on  L(W) + sum_l rho_l/2 ||W_l - Z_l + U_l||_F^2   (`penalty`)
    Z-step  Z_l = Proj_S(W_l + U_l)                                           (`update`)
    U-step  U_l = U_l + W_l - Z_l

`ADMM` is generic over what the constrained tensors are (`weights(model) -> {name: tensor}`, live
tensors so the penalty is differentiable) and over the projection (`project(name, tensor) ->
tensor`): magnitude or filter pruning, a rank or Tucker truncation, ... Use `penalty` as the
`StepHooks.regularizer` of `ctx.fit` and call `update` at chosen steps (`after_steps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from rbench.core.budget import compressible_layers, effective_weight

Projection = Callable[[str, torch.Tensor], torch.Tensor]
Weights = Callable[[nn.Module], dict[str, torch.Tensor]]


def layer_weights(paths: Iterable[str] | None = None) -> Weights:
    """`weights` for ADMM over the (effective) weights of Conv2d/Linear layers: all, or `paths`."""
    wanted = None if paths is None else set(paths)

    def weights(model: nn.Module) -> dict[str, torch.Tensor]:
        return {
            p: effective_weight(m)
            for p, m in compressible_layers(model).items()
            if wanted is None or p in wanted
        }

    return weights


class ADMM:
    """ADMM state (Z, U, rho per constrained tensor). Z starts at Proj(W), U at 0; each `update`
    first multiplies rho by `rho_growth` (Ye et al.'s "multi_rho"), then does the Z- and U-steps."""

    def __init__(
        self,
        model: nn.Module,
        weights: Weights,
        project: Projection,
        rho: float | dict[str, float] = 1e-3,
        rho_growth: float = 1.0,
    ) -> None:
        self.weights, self.project, self.rho_growth = weights, project, rho_growth
        with torch.no_grad():
            current = {n: w.detach() for n, w in weights(model).items()}
            self.Z = {n: project(n, w.clone()) for n, w in current.items()}
            self.U = {n: torch.zeros_like(w) for n, w in current.items()}
        self.rho = {n: rho[n] if isinstance(rho, dict) else float(rho) for n in current}
        self.updates = 0

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum_l rho_l/2 ||W_l - Z_l + U_l||_F^2, differentiable in W."""
        terms = [
            0.5 * self.rho[n] * (w - self.Z[n] + self.U[n]).pow(2).sum()
            for n, w in self.weights(model).items()
        ]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, w in self.weights(model).items():
            w = w.detach()
            self.rho[n] *= self.rho_growth
            self.Z[n] = self.project(n, w + self.U[n])
            self.U[n] += w - self.Z[n]
        self.updates += 1

    @torch.no_grad()
    def primal_residual(self, model: nn.Module) -> float:
        """||W - Z|| / ||W|| over all constrained tensors: how far W is from the constraint set."""
        diff = sum(float((w - self.Z[n]).pow(2).sum()) for n, w in self.weights(model).items())
        norm = sum(float(w.pow(2).sum()) for w in self.weights(model).values())
        return (diff / max(norm, 1e-30)) ** 0.5

    def after_steps(self, at: Iterable[int]) -> Callable[[nn.Module], None]:
        """An `after_step` hook for `ctx.fit` calling `update` once the optimiser has made each
        number of steps in `at` (counted from the hook's creation)."""
        pending, counter = set(at), {"step": 0}

        def hook(model: nn.Module) -> None:
            counter["step"] += 1
            if counter["step"] in pending:
                self.update(model)

        return hook
