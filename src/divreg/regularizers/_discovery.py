r"""Generalized category discovery: LegoGCD's Local Entropy Regularization (Cao et al., "Solving
the Catastrophic Forgetting Problem in Generalized Category Discovery", CVPR 2024; official code
github.com/Cliffia123/LegoGCD, ``train.py`` L95-160, ``model.py`` L266-278).

Unlabelled samples confidently predicted as a *known* class keep a sharp, prior-adjusted
prediction:

.. math::
    o_i = 1[\text{unlabelled}]\, 1[\max_k \mathrm{softmax}(z_i / 0.1)_k \ge \delta]\,
          1[\arg\max_k z_{ik} < K_{known}],

    \mathrm{LER} = -\frac1B \sum_i o_i \sum_k \mathrm{softmax}(z_i/\tau_o)_k
                   \log \mathrm{softmax}(z_i/\tau_o - \Delta)_k,\qquad \Delta_k = 0.4 \log(1/\tilde p_k),

with z the prototype logits (cosine similarities), :math:`\tau_o = 0.05`, :math:`\tilde p` an EMA
(momentum 0.999, from uniform) of the batch-mean softmax of z at temperature 1, and weight 2 in
the official code (the paper: 2 on CUB, 1 on CIFAR-100).

Where the official code departs from the paper, divreg follows the code and says so: the
threshold :math:`\delta` defaults to 0.7 (the code's default; its scripts use 0.7-0.95 per data
set); the sharp target softmax(z/0.05) is not detached (``detach_target=False``); the mean runs over
every row of the batch, masked rows counting 0; the prior is updated after the loss is computed.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schedules import Schedule, as_schedule


def known_confident_mask(logits: Tensor, unlabelled: Tensor, num_known: int, *, threshold: float = 0.7,
                         temperature: float = 0.1) -> Tensor:
    """LegoGCD's o_i: (B,) bool, unlabelled rows whose softmax(z / temperature) peaks at or above
    ``threshold`` on one of the first ``num_known`` classes.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
        >>> unlabelled = torch.tensor([True, True, True, False])
        >>> known_confident_mask(logits, unlabelled, num_known=2).tolist()  # kept; novel class; unsure; labelled
        [True, False, False, False]
    """
    if logits.dim() != 2 or unlabelled.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (B, K) and unlabelled (B,), got {tuple(logits.shape)} and "
                         f"{tuple(unlabelled.shape)}")
    if not 0 < num_known <= logits.shape[1]:
        raise ValueError(f"num_known must be in [1, {logits.shape[1]}], got {num_known}")
    confidence, predicted = torch.softmax(logits.detach().float() / temperature, dim=1).max(dim=1)
    return unlabelled.bool() & (confidence >= threshold) & (predicted < num_known)


def local_entropy(logits: Tensor, mask: Tensor, prior: Tensor, *, temperature: float = 0.05, strength: float = 0.4,
                  detach_target: bool = False) -> Tensor:
    r"""Per-sample LER values (B,): :math:`-o_i \sum_k \mathrm{softmax}(z_i/\tau)_k
    \log\mathrm{softmax}(z_i/\tau + \mathrm{strength} \cdot \log \tilde p)_k` (0 where the mask is
    off). Average over the batch for the paper's loss.

    Example:
        >>> import torch
        >>> prior = torch.full((2,), 0.5)  # a uniform prior shifts nothing: the entropy of softmax(z / tau)
        >>> [round(v, 4) for v in local_entropy(torch.zeros(2, 2), torch.tensor([True, False]), prior).tolist()]
        [0.6931, 0.0]
    """
    if prior.shape != logits.shape[1:] or bool((prior <= 0).any()):
        raise ValueError(f"prior must be ({logits.shape[1]},) and positive, got {tuple(prior.shape)}")
    scaled = logits.float() / temperature if logits.dtype != torch.float64 else logits / temperature
    target = torch.softmax(scaled, dim=1)
    target = target.detach() if detach_target else target
    adjusted = F.log_softmax(scaled + strength * prior.to(scaled.dtype).log(), dim=1)  # z/tau - Delta
    return -(target * adjusted).sum(dim=1) * mask.to(scaled.dtype)


class PriorEMA:
    """:math:`\\tilde p \\leftarrow m \\tilde p + (1 - m)\\, \\mathrm{mean}_i \\mathrm{softmax}(z_i)`,
    from uniform (the official ``qhat``)."""

    def __init__(self, num_classes: int, momentum: float = 0.999):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.value = momentum, torch.full((num_classes,), 1.0 / num_classes)

    @torch.no_grad()
    def update(self, logits: Tensor) -> Tensor:
        mean = torch.softmax(logits.detach().float(), dim=1).mean(dim=0).to(self.value.device)
        self.value = self.momentum * self.value + (1 - self.momentum) * mean
        return self.value


class LocalEntropyRegularizer(torch.nn.Module):
    """LegoGCD's LER as a module: ``weight(step)`` * mean over the batch of :func:`local_entropy`
    with the mask of :func:`known_confident_mask`, then the prior's EMA update."""

    def __init__(self, num_classes: int, num_known: int, *, weight: Union[float, Schedule] = 2.0,
                 threshold: float = 0.7, temperature: float = 0.05, strength: float = 0.4, momentum: float = 0.999,
                 detach_target: bool = False):
        super().__init__()
        self.num_known, self.threshold, self.temperature = num_known, threshold, temperature
        self.strength, self.detach_target, self.weight = strength, detach_target, as_schedule(weight)
        self.prior = PriorEMA(num_classes, momentum)

    def forward(self, logits: Tensor, unlabelled: Tensor, *, step: int = 0) -> Tensor:
        mask = known_confident_mask(logits, unlabelled, self.num_known, threshold=self.threshold)
        values = local_entropy(logits, mask, self.prior.value.to(logits.device), temperature=self.temperature,
                               strength=self.strength, detach_target=self.detach_target)
        self.prior.update(logits)
        return self.weight(step) * values.mean()
