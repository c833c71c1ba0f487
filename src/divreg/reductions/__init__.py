"""Reductions: masked token mean, per-sequence mean, sum / num_items_in_batch.

Every reduction has the signature ``(values, mask=None, num_items_in_batch=None) -> scalar``, so
a loss takes one as its ``reduction`` argument; :func:`position_weights` gives the weights with
which a reduction sums its values (how the fused kernel reduces exactly as they do).
"""

from ._reductions import (
    REDUCTIONS,
    get_reduction,
    mask_from_labels,
    masked_mean,
    per_sequence_mean,
    position_weights,
    reduce,
    sum_over_items,
)

__all__ = ["REDUCTIONS", "get_reduction", "mask_from_labels", "masked_mean", "per_sequence_mean", "position_weights",
           "reduce", "sum_over_items"]
