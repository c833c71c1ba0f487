"""Universal Logit Distillation: cross-tokenizer distillation on aligned answer positions."""

from __future__ import annotations

from typing import Callable, Union

from torch import Tensor, nn

from ..divergences import sorted_probability_l1
from ..reductions import get_reduction, masked_mean
from ._common import apply_reduction


def align_answer_positions(student_mask: Tensor, teacher_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean masks selecting, in each row, the first ``min(n_student, n_teacher)`` answer
    positions of each side (the answers aligned at their first token, truncated to the
    shorter), so ``x[student_keep]`` and ``y[teacher_keep]`` pair up row by row, rank by rank.

    Example:
        >>> import torch
        >>> student = torch.tensor([[False, True, True, True]])  # a 3-token answer after a 1-token prompt
        >>> teacher = torch.tensor([[False, False, True, True]])  # the same answer in 2 teacher tokens
        >>> [keep.tolist() for keep in align_answer_positions(student, teacher)]  # the first 2 of each
        [[[False, True, True, False]], [[False, False, True, True]]]
    """
    if student_mask.shape[0] != teacher_mask.shape[0]:
        raise ValueError("student and teacher masks must have the same batch size")
    counts = student_mask.sum(1).minimum(teacher_mask.sum(1))  # (B,)
    student_keep = student_mask & (student_mask.cumsum(1) <= counts[:, None])
    teacher_keep = teacher_mask & (teacher_mask.cumsum(1) <= counts[:, None])
    return student_keep, teacher_keep


class ULDLoss(nn.Module):
    r"""Cross-tokenizer distillation loss of ULD: the sorted-probability Wasserstein-1 distance
    (:func:`divreg.divergences.sorted_probability_l1`) between the student's and the teacher's
    next-token distributions at aligned answer positions, averaged over those positions.

    Each side tokenizes the same prompt and answer with its own tokenizer; the answers are
    aligned at their first token and truncated to the shorter one, as the paper does. The
    official code (github.com/Nicolas-BZRD/llm-recipes, ``DistillationLoss``) averages within each
    sequence, then over the batch: ``reduction=per_sequence_mean``; it weighs the term by
    ``distil_factor`` = 1.5 next to a CE of weight 1 and skips the student's last answer token
    (EOS), which this class does not (give a mask without it to do so). Limits:
    sorting forgets token identity, and position k of one tokenization need not cover the same
    text as position k of the other; the loss is meant to be added to the student's own
    cross-entropy on the answer.

    Args:
        temperature: T > 0 applied to both sides.
        reduction: a reduction of :mod:`divreg.reductions` over the aligned student positions
            (the token mean by default; ``per_sequence_mean`` averages within each sequence first).

    References:
        Boizard et al. "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation
        Loss for LLMs", 2024, arXiv 2402.12030.
    """

    def __init__(self, *, temperature: float = 1.0, reduction: Union[str, Callable] = masked_mean):
        super().__init__()
        self.temperature, self.reduction = temperature, get_reduction(reduction)

    def forward(self, student_logits: Tensor, student_mask: Tensor, teacher_logits: Tensor, teacher_mask: Tensor,
                num_items_in_batch=None) -> Tensor:
        """``student_logits`` (B, Ts, Vs) with ``student_mask`` (B, Ts) True at answer positions;
        ``teacher_logits`` (B, Tt, Vt) with ``teacher_mask`` (B, Tt); ``num_items_in_batch``: the
        global count for the reduction (tokens for ``sum_over_items``, sequences for
        ``per_sequence_mean``), so the loss does not depend on gradient accumulation. Returns
        the reduced distance (a zero with graph when nothing aligns)."""
        student_keep, teacher_keep = align_answer_positions(student_mask, teacher_mask)
        if not bool(student_keep.any()):
            return student_logits.sum() * 0.0
        distances = sorted_probability_l1(student_logits[student_keep], teacher_logits[teacher_keep].detach(),
                                          temperature=self.temperature)  # (n,), rows in order
        values = distances.new_zeros(student_keep.shape).masked_scatter(student_keep, distances)  # (B, Ts)
        return apply_reduction(self.reduction, values, student_keep, num_items_in_batch)
