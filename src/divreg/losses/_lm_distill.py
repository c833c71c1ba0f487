"""Token-level distillation of a causal language model, from full logits or fused from hidden
states, to a dense or sparse teacher signal."""

from __future__ import annotations

from typing import Callable, Optional, Union

from torch import Tensor, nn

from ..divergences import check_divergence_options, check_tail_policy, get_divergence, sparse_kl
from ..fused import fused_linear_divergence, fused_linear_sparse_divergence
from ..reductions import get_reduction, mask_from_labels, sum_over_items
from ..schedules import Schedule, as_schedule
from ..targets import DenseLogits, HiddenStates, Signal, SparseTopK, as_logits
from ._common import LossOutput, apply_reduction, cross_entropy_values


class LMDistillLoss(nn.Module):
    r"""Distillation loss of a causal LM over the valid tokens of a batch,

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{t:\,y_t \ne -100}\Big[w_D\,\tau\,
        D\big(\mathrm{softmax}(z_t/T) \,\|\, p^{\text{teacher}}_t\big) + w_{CE}\,\mathrm{CE}(z_t, y_t)\Big],
        \quad \tau = T^2 \text{ if } t\_squared \text{ else } 1,

    with the default reduction :func:`divreg.reductions.sum_over_items` and N =
    ``num_items_in_batch``: the number of valid tokens in the *global* batch (every
    gradient-accumulation micro-batch on every process), so summing the micro-batch losses gives
    the same gradient however the batch is split. (Under DDP, which averages gradients over P
    processes, multiply the loss by P.) Any other reduction of :mod:`divreg.reductions` may be
    given (``masked_mean``: the micro-batch's own token mean; ``per_sequence_mean``).

    The student is a signal: :class:`~divreg.targets.DenseLogits` (the plain path) or
    :class:`~divreg.targets.HiddenStates` (hidden states, output weight and bias: the chunked
    :mod:`divreg.fused` path, which never materializes ``[tokens x vocab]`` logits). The target
    is :class:`~divreg.targets.DenseLogits`, :class:`~divreg.targets.HiddenStates` (its bias is
    used) or :class:`~divreg.targets.SparseTopK` (a cache's top-k; the divergence is then
    :func:`divreg.divergences.sparse_kl` with ``tail``). Signals are already aligned: position t
    predicts ``labels[..., t]``.

    Args:
        divergence: any name of ``divreg.divergences`` (dense targets).
        temperature: T, applied to both sides (a sparse target's log-probs must already be at T).
        t_squared: scale the divergence by T^2 (the same default as :class:`KDLoss`).
        divergence_weight, ce_weight: w_D and w_CE, numbers or schedules of the step.
        reduction: a reduction of :mod:`divreg.reductions` (or its name).
        tail: tail policy for sparse targets (one of ``divreg.divergences.TAIL_POLICIES``).
        chunk_size: tokens per chunk of the fused path (default: from a memory budget).
        ignore_index: label of positions left out.
    """

    def __init__(self, divergence: str = "forward_kl", *, temperature: float = 1.0, t_squared: bool = True,
                 divergence_weight: Union[float, Schedule] = 1.0, ce_weight: Union[float, Schedule] = 0.0,
                 reduction: Union[str, Callable] = sum_over_items, tail: str = "bucket",
                 chunk_size: Optional[int] = None, ignore_index: int = -100, **divergence_kwargs):
        super().__init__()
        check_tail_policy(tail)
        check_divergence_options(divergence, divergence_kwargs)
        self.divergence_fn = get_divergence(divergence).on_logits
        self.divergence, self.divergence_kwargs = divergence, divergence_kwargs
        self.temperature, self.t_squared, self.tail, self.chunk_size = temperature, t_squared, tail, chunk_size
        self.divergence_weight, self.ce_weight = as_schedule(divergence_weight), as_schedule(ce_weight)
        self.reduction, self.ignore_index = get_reduction(reduction), ignore_index

    def forward(self, student: Union[DenseLogits, HiddenStates, Tensor], target: Signal, labels: Tensor,
                num_items_in_batch=None, *, step: int = 0) -> LossOutput:
        divergence_weight = self.divergence_weight(step) * (self.temperature**2 if self.t_squared else 1.0)
        ce_weight = self.ce_weight(step)
        if isinstance(student, HiddenStates):
            return self._fused(student, target, labels, num_items_in_batch, divergence_weight, ce_weight)
        logits = as_logits(student)
        mask = mask_from_labels(labels, self.ignore_index)  # (B, T)
        if isinstance(target, SparseTopK):
            values = sparse_kl(logits, target.ids, target.logprobs, target.tail_logmass, tail=self.tail,
                               temperature=self.temperature)
        else:
            target_logits = as_logits(target).detach()
            values = self.divergence_fn(logits, target_logits, temperature=self.temperature, mask=mask,
                                        **self.divergence_kwargs)  # (B, T), 0 with a finite gradient off the mask
        divergence = apply_reduction(self.reduction, values, mask, num_items_in_batch)
        ce = divergence * 0.0
        if ce_weight:
            ce = apply_reduction(self.reduction, cross_entropy_values(logits, labels, self.ignore_index), mask,
                                 num_items_in_batch)
        loss = divergence_weight * divergence + ce_weight * ce
        return LossOutput(loss, divergence.detach(), ce.detach())

    def _fused(self, student: HiddenStates, target: Signal, labels, num_items_in_batch, divergence_weight,
               ce_weight) -> LossOutput:
        common = dict(labels=labels, ignore_index=self.ignore_index, temperature=self.temperature, bias=student.bias,
                      reduction=self.reduction, num_items_in_batch=num_items_in_batch,
                      divergence_weight=divergence_weight, ce_weight=ce_weight, chunk_size=self.chunk_size,
                      return_parts=True, logit_scale=student.logit_scale, softcap=student.softcap)
        if isinstance(target, SparseTopK):
            output = fused_linear_sparse_divergence(student.hidden, student.weight, target.ids, target.logprobs,
                                                    target.tail_logmass, tail=self.tail, **common)
        elif isinstance(target, HiddenStates):
            target_bias = None if target.bias is None else target.bias.detach()
            output = fused_linear_divergence(student.hidden, student.weight, target.hidden.detach(),
                                             target.weight.detach(), target_bias=target_bias,
                                             target_logit_scale=target.logit_scale, target_softcap=target.softcap,
                                             divergence=self.divergence, **common, **self.divergence_kwargs)
        else:
            raise ValueError(f"a HiddenStates student (the fused path) needs a HiddenStates or SparseTopK target, got "
                             f"{type(target).__name__}; give the teacher's hidden states, or the student's logits")
        return LossOutput(*output)
