"""The reference row: the adversarially trained dense model itself, unchanged (ratio 1)."""

from __future__ import annotations

from torch import nn

from rbench.core.budget import Budget
from rbench.core.errors import RbenchError
from rbench.core.registry import Method, register_method


@register_method
class Dense(Method):
    """The adversarially trained dense model (ratio 1), the reference every method is read against."""

    name = "dense"
    kind = "dense"
    citation = (
        "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018"
    )

    def check(self, model: nn.Module, budget: Budget) -> None:
        if budget.ratio != 1:
            raise RbenchError("the 'dense' method does not compress; run it with --ratio 1")

    def compress(self, model: nn.Module, budget: Budget, ctx) -> nn.Module:
        return model
