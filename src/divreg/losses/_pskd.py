"""Progressive self-knowledge distillation (PS-KD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from typing import Callable, Union

from ..divergences import cross_entropy
from ..reductions import get_reduction, masked_mean
from ..schedules import Schedule
from ..targets import PastPredictions


class PSKDLoss(nn.Module):
    r"""Soft cross-entropy to a target that mixes the label with the model's own prediction
    for the same example from the previous epoch.

    .. math::
        \tilde y_t = (1 - \alpha_t)\, y + \alpha_t\, P^{(t-1)}_{\text{example}},\quad
        \alpha_t = \alpha_T \frac{t + 1}{T},\quad
        \mathcal{L} = H(\tilde y_t, \mathrm{softmax}(z))

    The memory is a :class:`divreg.targets.PastPredictions` (one-hot at the start); the ramp is a
    :class:`divreg.schedules.LinearRamp` over epochs. Call :meth:`remember` with the batch's
    predictions after computing the loss (with the predictions of every process, in a
    multi-process run), as the paper's code does.

    Args:
        memory: the per-example memory.
        alpha: schedule of :math:`\alpha_t` (by epoch), e.g. ``LinearRamp(0.8, num_epochs)``.
        reduction: a reduction of :mod:`divreg.reductions` over the batch (the mean by default).

    References:
        Kim, Ji, Yoon, Hwang. "Self-Knowledge Distillation with Progressive Refinement of
        Targets", ICCV 2021, arXiv 2006.12000, eq. (5)-(6); paper default alpha_T = 0.8.
    """

    def __init__(self, memory: PastPredictions, alpha: Schedule, *, reduction: Union[str, Callable] = masked_mean):
        super().__init__()
        self.memory, self.alpha, self.reduction = memory, alpha, get_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor, indices: Tensor, epoch: int) -> Tensor:
        """``logits`` (B, C), ``labels`` (B,), ``indices`` (B,) dataset indices, ``epoch`` from 0."""
        alpha = self.alpha(epoch)
        with torch.no_grad():
            one_hot = F.one_hot(labels, logits.shape[-1]).to(self.memory.memory.dtype)
            target = (1.0 - alpha) * one_hot + alpha * self.memory.lookup(indices)  # (B, C)
        return self.reduction(cross_entropy(logits, target.log()))

    def remember(self, indices: Tensor, logits: Tensor) -> None:
        """Store ``softmax(logits)`` as the examples' predictions for the next epoch."""
        self.memory.update(indices, torch.softmax(logits.detach().float(), -1))
