"""Fused, chunked divergences from hidden states and output-layer weights: no full
``[tokens x vocab]`` logits, peak extra memory O(chunk x V + V x H)."""

from ._fused_linear import FusedOutput, fused_linear_divergence, fused_linear_sparse_divergence
from ._module import FusedLinearDivergence
from ._token_logprobs import TokenLogprobs, TokenStatistics, fused_linear_token_logprobs, token_logprobs

__all__ = ["FusedLinearDivergence", "FusedOutput", "TokenLogprobs", "TokenStatistics", "fused_linear_divergence",
           "fused_linear_sparse_divergence", "fused_linear_token_logprobs", "token_logprobs"]
