r"""What a top-k teacher loses, measured where the full teacher is available.

A cached or served teacher gives, per position, its top-k log-probs and the mass of the rest
(:class:`~divreg.targets.SparseTopK`); the loss is then the bucket KL over the k + 1 outcomes
(:func:`divreg.divergences.sparse_kl`), not the full-vocabulary KL. By the log-sum inequality the
bucket KL never exceeds the full one, and for forward KL the gap is exactly

.. math:: \mathrm{KL}(p\,\|\,q) - \mathrm{KL}_{k}(p\,\|\,q)
    = p_{\bar S}\,\mathrm{KL}\big(p_{\cdot|\bar S}\,\big\|\,q_{\cdot|\bar S}\big) \ge 0,

the tail mass times the KL between the two tails renormalized. Its gradient in the student's
logits is :math:`q - \tilde p` with :math:`\tilde p_i = p_i` on the top-k and
:math:`p_{\bar S} q_i / q_{\bar S}` off it (the tail shaped like the student's), against
:math:`q - p` for the full loss. :func:`truncation_report` measures both on a sample of positions:
the loss gap (absolute and relative) and the cosine between the two gradients, so a user can
choose k knowing what it costs. (No peer library reports this; verl issue #7856 asks for it.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..divergences import forward_kl, sparse_kl


def truncation_report(student_logits: Tensor, teacher_logits: Tensor, top_k: int) -> dict[str, float]:
    r"""The cost of keeping the teacher's top ``top_k`` (plus the tail bucket) instead of its
    full distribution, for forward KL(teacher || student), over the positions given.

    Args:
        student_logits, teacher_logits: (N, V) at the same N positions (the caller samples them).
        top_k: k, as a cache or a served teacher keeps.

    Returns:
        ``loss_full`` and ``loss_topk`` (means over positions), ``gap`` (mean of full - top-k,
        >= 0), ``relative_gap`` (``gap / loss_full``), ``cosine_mean`` and ``cosine_min`` (per
        position, between the full and the top-k gradients in the student's logits; 1 where
        both vanish), ``tail_mass_mean`` and ``tail_mass_p90`` (the teacher's mass off its top-k).

    Example:
        >>> import torch
        >>> teacher, student = torch.tensor([[4.0, 3.0, 0.0, -1.0]]), torch.zeros(1, 4)
        >>> full = truncation_report(student, teacher, top_k=4)  # nothing truncated
        >>> round(full["gap"], 12), round(full["cosine_min"], 12), full["tail_mass_mean"]
        (0.0, 1.0, 0.0)
        >>> truncation_report(student, teacher, top_k=2)["gap"] > 0
        True
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student_logits and teacher_logits must both be (N, V), got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    vocabulary = student_logits.shape[-1]
    if not 1 <= top_k <= vocabulary:
        raise ValueError(f"top_k must be in [1, {vocabulary}], got {top_k}")
    teacher_log_p = torch.log_softmax(teacher_logits.detach().double(), -1)
    top, ids = teacher_log_p.topk(top_k, -1)
    tail = torch.logsumexp(teacher_log_p.scatter(-1, ids, -math.inf), -1)

    with torch.enable_grad():  # (callers evaluate under no_grad)
        logits = student_logits.detach().double().requires_grad_(True)
        full = forward_kl(logits, teacher_log_p)  # (N,)
        (full_grad,) = torch.autograd.grad(full.sum(), logits)
        logits = student_logits.detach().double().requires_grad_(True)
        truncated = sparse_kl(logits, ids, top, tail, tail="bucket")  # (N,)
        (topk_grad,) = torch.autograd.grad(truncated.sum(), logits)

    norms = full_grad.norm(dim=-1) * topk_grad.norm(dim=-1)
    cosine = torch.where(norms > 0, (full_grad * topk_grad).sum(-1) / norms.clamp(min=1e-300), 1.0)
    mass = tail.exp()
    loss_full, loss_topk = float(full.detach().mean()), float(truncated.detach().mean())
    gap = float((full - truncated).detach().mean())
    return {"loss_full": loss_full, "loss_topk": loss_topk, "gap": gap,
            "relative_gap": gap / loss_full if loss_full > 0 else 0.0,
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "tail_mass_mean": float(mass.mean()), "tail_mass_p90": float(mass.quantile(0.9))}
