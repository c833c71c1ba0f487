"""Reductions: masked token mean, per-sequence mean, sum / num_items_in_batch."""

from ._reductions import REDUCTIONS, mask_from_labels, masked_mean, per_sequence_mean, reduce, sum_over_items

__all__ = ["REDUCTIONS", "mask_from_labels", "masked_mean", "per_sequence_mean", "reduce", "sum_over_items"]
