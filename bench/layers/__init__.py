"""Compressed layers: masks on Conv2d/Linear weights, registered factorised layers and layers with
dropped filters, rank planning; `rebuild` makes a model of a recorded structure.

Importing this package registers every shipped layer type (the one place that discovers them).
"""

from rbench.layers import factorised, structured  # noqa: F401  (registers their layer types)
from rbench.layers.base import (
    LAYER_TYPES,
    SpecLayer,
    finalize,
    rebuild,
    register_layer,
    set_module,
    structure_of,
)
from rbench.layers.masks import (
    apply_masks,
    keep_counts,
    magnitude_masks,
    mask_gradients,
    masks_of,
    reapply_masks,
    top_k_mask,
)

__all__ = [
    "LAYER_TYPES",
    "SpecLayer",
    "apply_masks",
    "finalize",
    "keep_counts",
    "magnitude_masks",
    "mask_gradients",
    "masks_of",
    "reapply_masks",
    "rebuild",
    "register_layer",
    "set_module",
    "structure_of",
    "top_k_mask",
]
