"""Token-level distillation of a causal language model, from full logits or fused from hidden
states, to a dense or sparse teacher signal."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..divergences import sparse_kl
from ..divergences._registry import get_divergence
from ..fused import FusedOutput, fused_linear_divergence, fused_linear_sparse_divergence
from ..reductions import mask_from_labels, sum_over_items


class LMDistillLoss(nn.Module):
    r"""Distillation loss of a causal LM over the valid tokens of a batch,

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{t:\,y_t \ne -100}\Big[w_D\,\tau\,
        D\big(\mathrm{softmax}(z_t/T) \,\|\, p^{\text{teacher}}_t\big) + w_{CE}\,\mathrm{CE}(z_t, y_t)\Big],
        \quad \tau = T^2 \text{ if } t\_squared \text{ else } 1,

    with N = ``num_items_in_batch``: the number of valid tokens in the *global* batch (every
    gradient-accumulation micro-batch on every process), so summing the micro-batch losses gives
    the same gradient however the batch is split. (Under DDP, which averages gradients over P
    processes, multiply the loss by P.)

    The teacher is dense (``teacher_logits``, or ``teacher_hidden`` + ``teacher_weight`` for the
    fused path) or sparse (``teacher_sparse = (ids, logprobs, tail_logmass)``, a cache's top-k;
    the divergence is then :func:`divreg.divergences.sparse_kl` with ``tail``). With
    ``fused=True`` the student is given as hidden states and output weight and no
    ``[tokens x vocab]`` logits are materialized (:mod:`divreg.fused`). Inputs are already
    aligned: position t predicts ``labels[..., t]``.

    Args:
        divergence: any name of ``divreg.divergences`` (dense teachers).
        temperature: T, applied to both sides (a sparse teacher's log-probs must already be at T).
        t_squared: scale the divergence by T^2.
        divergence_weight, ce_weight: w_D and w_CE.
        fused: use the chunked fused kernels.
        tail: tail policy for sparse teachers (``"bucket"`` or ``"renormalize"``).
        chunk_size: tokens per chunk of the fused path (default: from a memory budget).
    """

    def __init__(self, divergence: str = "forward_kl", *, temperature: float = 1.0, t_squared: bool = False,
                 divergence_weight: float = 1.0, ce_weight: float = 0.0, fused: bool = False, tail: str = "bucket",
                 chunk_size: Optional[int] = None, ignore_index: int = -100, **divergence_kwargs):
        super().__init__()
        self.divergence_fn = get_divergence(divergence).on_logits
        self.divergence, self.divergence_kwargs = divergence, divergence_kwargs
        self.temperature, self.fused, self.tail, self.chunk_size = temperature, fused, tail, chunk_size
        self.divergence_weight = divergence_weight * (temperature**2 if t_squared else 1.0)
        self.ce_weight, self.ignore_index = ce_weight, ignore_index

    def forward(self, *, labels: Tensor, num_items_in_batch, student_logits: Optional[Tensor] = None,
                student_hidden: Optional[Tensor] = None, student_weight: Optional[Tensor] = None,
                teacher_logits: Optional[Tensor] = None, teacher_hidden: Optional[Tensor] = None,
                teacher_weight: Optional[Tensor] = None, teacher_sparse: Optional[tuple] = None) -> FusedOutput:
        if self.fused:
            return self._fused(labels, num_items_in_batch, student_hidden, student_weight, teacher_hidden,
                               teacher_weight, teacher_sparse)
        if student_logits is None:
            raise ValueError("the plain path needs student_logits (or construct the loss with fused=True)")
        mask = mask_from_labels(labels, self.ignore_index)  # (B, T)
        if teacher_sparse is not None:
            values = sparse_kl(student_logits, *teacher_sparse, tail=self.tail, temperature=self.temperature)
        elif teacher_logits is not None:
            values = self.divergence_fn(student_logits, teacher_logits.detach(), temperature=self.temperature,
                                        **self.divergence_kwargs)  # (B, T)
        else:
            raise ValueError("give the teacher as teacher_logits or teacher_sparse")
        divergence = sum_over_items(values, mask, num_items_in_batch)
        ce = divergence * 0.0
        if self.ce_weight:
            flat_logits = student_logits.reshape(-1, student_logits.shape[-1]).float()
            ce = sum_over_items(F.cross_entropy(flat_logits, labels.reshape(-1), ignore_index=self.ignore_index,
                                                reduction="none").view_as(values), mask, num_items_in_batch)
        loss = self.divergence_weight * divergence + self.ce_weight * ce
        return FusedOutput(loss, divergence.detach(), ce.detach())

    def _fused(self, labels, num_items_in_batch, student_hidden, student_weight, teacher_hidden, teacher_weight,
               teacher_sparse) -> FusedOutput:
        if student_hidden is None or student_weight is None:
            raise ValueError("the fused path needs student_hidden and student_weight")
        common = dict(labels=labels, ignore_index=self.ignore_index, temperature=self.temperature, reduction="sum",
                      num_items_in_batch=num_items_in_batch, divergence_weight=self.divergence_weight,
                      ce_weight=self.ce_weight, chunk_size=self.chunk_size, return_parts=True)
        if teacher_sparse is not None:
            return fused_linear_sparse_divergence(student_hidden, student_weight, *teacher_sparse, tail=self.tail,
                                                  **common)
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("the fused path needs teacher_hidden and teacher_weight, or teacher_sparse")
        return fused_linear_divergence(student_hidden, student_weight, teacher_hidden.detach(), teacher_weight.detach(),
                                       divergence=self.divergence, **common, **self.divergence_kwargs)
