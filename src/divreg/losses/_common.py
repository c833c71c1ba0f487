"""What the losses share: their output type, hard-label cross-entropy values, and applying a
reduction of :mod:`divreg.reductions` with or without a global item count."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class LossOutput(NamedTuple):
    """A loss and its detached parts (each reduced like the loss, before its weight)."""

    loss: Tensor
    divergence: Tensor
    cross_entropy: Tensor


def cross_entropy_values(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Per-position hard-label cross-entropy (shape ``labels.shape``), in fp32 (fp64 for fp64
    logits), 0 at ignored positions."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # math in fp32 at least
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index,
                           reduction="none")
    return flat.view(labels.shape)


def apply_reduction(reduction: Callable, values: Tensor, mask: Optional[Tensor], num_items_in_batch=None) -> Tensor:
    """``reduction(values, mask[, num_items_in_batch])``: the global count is passed only when given."""
    if num_items_in_batch is None:
        return reduction(values, mask)
    return reduction(values, mask, num_items_in_batch)
