"""Signals: what a target gives a loss, as small typed objects.

A loss never cares whether its target is a live teacher, a cache on disk or a frozen
reference policy: it receives one of these. Dense targets come as logits or as hidden states
with the output layer (for the fused path, which never builds ``[tokens x vocab]`` logits);
a cached teacher gives its top-k log-probs and the log of its remaining mass; a reference
policy scored on sampled tokens gives their log-probs (what the KL estimators take).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class DenseLogits:
    """Logits over the whole vocabulary."""

    logits: Tensor  # (..., V)

    def to_logits(self) -> Tensor:
        return self.logits


@dataclass(frozen=True)
class HiddenStates:
    """The last hidden states and the output layer that reads them:
    ``logits = hidden @ weight.T + bias``. The bias travels with the weight, so no path drops it.

    Example:
        >>> import torch
        >>> signal = HiddenStates(torch.ones(2, 3), torch.eye(4, 3), torch.zeros(4))
        >>> tuple(signal.to_logits().shape)
        (2, 4)
    """

    hidden: Tensor  # (..., H)
    weight: Tensor  # (V, H)
    bias: Optional[Tensor] = None  # (V,)
    # an output head that transforms z = hidden @ weight.T + bias: logit_scale s (s z) and softcap c (c tanh(s z / c),
    # Gemma 2/3); None: the plain head. They travel with the weight too, so no path drops them
    logit_scale: Optional[float] = None
    softcap: Optional[float] = None

    def to_logits(self) -> Tensor:
        """The full logits (..., V) the model computes: materialized, for the plain (non-fused) path."""
        logits = self.hidden @ self.weight.T  # (..., V)
        logits = logits if self.bias is None else logits + self.bias
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        return logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)


@dataclass(frozen=True)
class SparseTopK:
    """A sparse target per position: its top-k token ids, their log-probs, and the log of the
    probability mass on every other token (None: derived as log(1 - sum of the top-k))."""

    ids: Tensor  # (..., k) int64
    logprobs: Tensor  # (..., k)
    tail_logmass: Optional[Tensor] = None  # (...)

    def to_device(self, device) -> "SparseTopK":
        tail = None if self.tail_logmass is None else self.tail_logmass.to(device)
        return SparseTopK(self.ids.to(device), self.logprobs.to(device), tail)


@dataclass(frozen=True)
class SampledLogprobs:
    """Log-probabilities of sampled tokens (one per position), e.g. a reference policy scoring
    the tokens a policy generated: the input of :mod:`divreg.estimators`."""

    logprobs: Tensor  # (...)


Signal = Union[DenseLogits, HiddenStates, SparseTopK, SampledLogprobs]


def as_logits(target: Union[Tensor, DenseLogits, HiddenStates]) -> Tensor:
    """Full logits from a tensor or a dense signal; ``ValueError`` for a signal that has none.

    Example:
        >>> import torch
        >>> from divreg.targets import HiddenStates
        >>> hidden, bias = torch.tensor([[1.0, 2.0]]), torch.tensor([0.5, 0.0])
        >>> weight = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # (V, H): token 0 reads h_0, token 1 h_0 + h_1
        >>> as_logits(HiddenStates(hidden, weight, bias)).tolist()  # hidden @ weight.T + bias
        [[1.5, 3.0]]
        >>> logits = torch.zeros(2, 3)
        >>> as_logits(logits) is logits
        True
    """
    if isinstance(target, Tensor):
        return target
    if isinstance(target, (DenseLogits, HiddenStates)):
        return target.to_logits()
    raise ValueError(f"expected logits (a tensor, DenseLogits or HiddenStates), got {type(target).__name__}; "
                     "a sparse or sampled signal has no full logits")


@torch.no_grad()
def detached(signal: Signal) -> Signal:
    """The same signal with every tensor detached (a target is a constant for the loss).

    Example:
        >>> import torch
        >>> from divreg.targets import DenseLogits
        >>> logits = torch.tensor([[0.0, 1.0]], requires_grad=True)
        >>> target = detached(DenseLogits(logits * 2))
        >>> target.logits.requires_grad, target.logits.tolist()  # the same values, no graph
        (False, [[0.0, 2.0]])
    """
    fields = {name: (value.detach() if isinstance(value, Tensor) else value) for name, value in vars(signal).items()}
    return type(signal)(**fields)
