"""``nn.Module`` wrapper of :func:`fused_linear_divergence` for training loops."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from ._fused_linear import FusedOutput, fused_linear_divergence
from ._inputs import DEFAULT_MEMORY_BUDGET_MB


class FusedLinearDivergence(nn.Module):
    """Holds the options of :func:`fused_linear_divergence`; ``forward`` takes the tensors.

    Example:
        >>> import torch
        >>> loss_fn = FusedLinearDivergence("generalized_jsd", temperature=2.0, beta=0.5)
        >>> h, w = torch.randn(8, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> loss = loss_fn(h, w, torch.randn(8, 32), torch.randn(100, 32))
        >>> loss.backward()
    """

    def __init__(
        self,
        divergence: str = "forward_kl",
        *,
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: Optional[int] = None,
        memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
        reduction: str = "mean",
        target_vocab_slice: Optional[int] = None,
        divergence_weight: float = 1.0,
        ce_weight: float = 0.0,
        **divergence_kwargs,
    ):
        super().__init__()
        self.options = dict(
            divergence=divergence, temperature=temperature, ignore_index=ignore_index, chunk_size=chunk_size,
            memory_budget_mb=memory_budget_mb, reduction=reduction, target_vocab_slice=target_vocab_slice,
            divergence_weight=divergence_weight, ce_weight=ce_weight, **divergence_kwargs,
        )

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        target_hidden: Tensor,
        target_weight: Tensor,
        labels: Optional[Tensor] = None,
        *,
        bias: Optional[Tensor] = None,
        target_bias: Optional[Tensor] = None,
        token_weights: Optional[Tensor] = None,
        num_items_in_batch=None,
        return_parts: bool = False,
    ) -> Union[Tensor, FusedOutput]:
        return fused_linear_divergence(
            hidden, weight, target_hidden, target_weight, labels=labels, bias=bias, target_bias=target_bias,
            token_weights=token_weights, num_items_in_batch=num_items_in_batch, return_parts=return_parts,
            **self.options,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.options.items())
