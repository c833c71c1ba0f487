"""Where a signal comes from: a live model (a teacher, or a frozen reference policy). A cached
teacher is :class:`divreg.targets.TeacherCache`; each has ``.signal(batch)``.

A *model* here is anything with ``signal(batch, hidden=False)`` returning the next-token
:class:`DenseLogits` (or :class:`HiddenStates` with ``hidden=True``) for a batch of token ids,
like :class:`divreg.models.CausalLM`; a plain ``nn.Module`` classifier is called on the batch
and its output taken as :class:`DenseLogits`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._signals import DenseLogits, SampledLogprobs, Signal


class LiveTeacher:
    """A frozen model evaluated under ``no_grad`` on each batch.

    Args:
        model: a causal LM wrapper with ``signal(batch, hidden=...)``, or a classifier module.
        hidden: give :class:`HiddenStates` (for the fused path) instead of :class:`DenseLogits`.
    """

    def __init__(self, model: nn.Module, *, hidden: bool = False):
        self.model, self.hidden = model, hidden

    @torch.no_grad()
    def signal(self, batch: Any) -> Signal:
        if hasattr(self.model, "signal"):
            return self.model.signal(batch, hidden=self.hidden)
        if self.hidden:
            raise ValueError(f"{type(self.model).__name__} has no signal(batch, hidden=True); hidden states need a "
                             "model wrapper such as divreg.models.CausalLM")
        return DenseLogits(self.model(batch))


class ReferencePolicy:
    """A frozen reference policy scored on the tokens of a batch: the log-probability it gives
    each next token, ``log pi_ref(x_{t+1} | x_{<=t})`` at position t (shape (B, T-1)).

    Args:
        model: a causal LM wrapper with ``signal(batch, hidden=False)`` (see the module doc).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.no_grad()
    def signal(self, batch: dict[str, Tensor]) -> SampledLogprobs:
        logits = self.model.signal(batch, hidden=False).logits.float()  # (B, T-1, V)
        tokens = batch["input_ids"][:, 1:].unsqueeze(-1)  # (B, T-1, 1)
        return SampledLogprobs((logits.gather(-1, tokens) - logits.logsumexp(-1, keepdim=True)).squeeze(-1))


