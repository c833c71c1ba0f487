"""Fused, chunked divergences from hidden states and output-layer weights: no full
``[tokens x vocab]`` logits, peak extra memory O(chunk x V + V x H)."""

from ._fused_linear import FusedOutput, fused_linear_divergence, fused_linear_sparse_divergence
from ._module import FusedLinearDivergence

__all__ = ["FusedLinearDivergence", "FusedOutput", "fused_linear_divergence", "fused_linear_sparse_divergence"]
