"""PGD (Madry et al. 2018) for L_inf and L2: the one attack used for adversarial training and for
the evaluation protocol's PGD row. Inputs and eps are in pixel units, [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PGD:
    norm: str  # "Linf" or "L2"
    eps: float
    step_size: float
    steps: int
    random_start: bool = True

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        loss: str = "ce",
    ) -> torch.Tensor:
        """Adversarial examples of x, detached. `loss` is "ce", "kl" (TRADES' inner maximisation,
        against the model's clean prediction) or "margin" (Carlini & Wagner's logit margin
        max_{j != y} z_j - z_y, which saturates nowhere: the gradient-masking cross-check). The
        caller chooses the model's mode."""
        if self.eps == 0 or self.steps == 0:
            return x.detach()
        with torch.no_grad():
            target = F.softmax(model(x), dim=1) if loss == "kl" else None
        delta = self._kl_start(x, generator) if loss == "kl" else self._start(x, generator)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            if loss == "kl":
                objective = F.kl_div(F.log_softmax(logits, 1), target, reduction="sum")
            elif loss == "margin":
                true = logits.gather(1, y[:, None]).squeeze(1)
                other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -torch.inf)
                objective = (other.amax(1) - true).sum()
            else:
                objective = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(objective, delta)
            delta = self._step(delta.detach(), grad, x)
        return (x + delta).detach()

    def _start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros_like(x)
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(
            x.device, x.dtype, non_blocking=True
        )
        if self.norm == "Linf":
            delta = (2 * noise - 1) * self.eps
        else:
            gauss = torch.randn(x.shape, generator=generator, device="cpu").to(
                x.device, x.dtype, non_blocking=True
            )
            delta = _l2_project(gauss, self.eps) * noise.flatten(1)[:, :1].view(
                -1, *[1] * (x.dim() - 1)
            )
        return (x + delta).clamp_(0, 1) - x

    def _kl_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """TRADES' start (Zhang et al. 2019, and HYDRA's code): x + 0.001 N(0, 1), in the bounds."""
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        return (x + 0.001 * noise).clamp_(0, 1) - x

    def _step(self, delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "Linf":
            delta = (delta + self.step_size * grad.sign()).clamp_(-self.eps, self.eps)
        else:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            delta = _l2_project(delta + self.step_size * grad / norm, self.eps)
        return (x + delta).clamp_(0, 1) - x


def _l2_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norm = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
    return delta * (eps / norm.clamp_min(1e-12)).clamp(max=1.0)
