"""Random pruning: the floor baseline of every pruning table (ShrinkBench's rule: magnitude and
random pruning under identical fine-tuning; Blalock, Gonzalez Ortiz, Frankle & Guttag, "What is
the State of Neural Network Pruning?", MLSys 2020).

Algorithm (as implemented):
1. in every Conv2d/Linear keep a uniformly random subset of its weights, at the same density
   1/B in every layer, exactly floor(N / B) weights in all (the generator is seeded by the run's
   seed, so a seed fixes the masks);
2. adversarial fine-tuning exactly as `magnitude` does it (the same loss, rate, schedule, optimiser
   and budget): the two rows differ only in which weights survive.

Defaults: those of `magnitude` (SGD momentum 0.9, weight decay 1e-4, the suite's batch size and
fine-tuning rate). Deviation: none, there is no paper procedure beyond the baseline itself.
"""

from __future__ import annotations

import torch
from torch import nn

from rbench.core.budget import compressible_layers
from rbench.core.registry import register_method
from rbench.layers import keep_counts, top_k_mask
from rbench.methods.magnitude import Magnitude


@register_method
class RandomPruning(Magnitude):
    """Random pruning at a uniform per-layer density + magnitude's adversarial fine-tuning."""

    name = "random"
    citation = (
        "Blalock, Gonzalez Ortiz, Frankle, Guttag, What is the State of Neural Network Pruning?, "
        "MLSys 2020 (random pruning baseline)"
    )
    variants = ("harness",)

    def masks(self, model: nn.Module, ratio: float, ctx) -> dict[str, torch.Tensor]:
        """Step 1: per layer, a random subset of floor-shared size (exact total floor(N / B))."""
        layers = compressible_layers(model)
        counts = keep_counts({p: m.weight.numel() for p, m in layers.items()}, ratio, exact=True)
        gen = ctx.generator("random-masks") if ctx is not None else torch.Generator()
        return {
            p: top_k_mask(torch.rand(m.weight.shape, generator=gen).to(m.weight.device), counts[p])
            for p, m in layers.items()
        }
