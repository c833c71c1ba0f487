"""Skew KL and skew reverse KL (DistiLLM)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._common import (
    FRESH,
    LEAN_WEIGHT_RANGE,
    Scratch,
    exp_into,
    check_unit_interval,
    kl_to_mixture,
    mixture_in_probability_space,
    log_ratio_to_mixture,
    prepare_log_probs,
    project_to_logits,
    row_dot,
)


def skew_kl(
    logits: Tensor, target_logits: Tensor, *, alpha: float = 0.1, temperature: float = 1.0, dim: int = -1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Skew KL: forward KL from the target to a target-model mixture.

    .. math:: \mathrm{SKL}^{(\alpha)}(p, q) = \mathrm{KL}\big(p \,\|\, \alpha p + (1 - \alpha) q\big)

    The full divergence value (not only its cross-entropy part). ``alpha = 0`` is
    :math:`\mathrm{KL}(p \| q)`; ``alpha = 1`` is 0. Skewing bounds the value by
    :math:`-\log \alpha` and keeps the gradient finite where q has no mass.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p.
        alpha: skew in [0, 1] (paper default 0.1).
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Ko, Kim, Chen, Yun. "DistiLLM: Towards Streamlined Distillation for Large Language
        Models", 2024, arXiv 2402.03898, eq. (4).

    Example:
        >>> import math, torch
        >>> logits, target_logits = torch.zeros(2), torch.tensor([math.log(3), 0.0])  # q uniform, p = (3/4, 1/4)
        >>> round(float(skew_kl(logits, target_logits, alpha=0.0)), 4)  # KL(p || q) = 0.75 log 1.5 + 0.25 log 0.5
        0.1308
        >>> round(float(skew_kl(logits, target_logits, alpha=0.5)), 4)  # KL(p || m), m = (5/8, 3/8)
        0.0354
        >>> float(skew_kl(logits, target_logits, alpha=1.0))
        0.0
    """
    check_unit_interval("alpha", alpha)
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    return kl_to_mixture(log_p, log_q, 1.0 - alpha)


def skew_reverse_kl(
    logits: Tensor, target_logits: Tensor, *, alpha: float = 0.1, temperature: float = 1.0, dim: int = -1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Skew reverse KL: reverse KL from the model to a target-model mixture.

    .. math:: \mathrm{SRKL}^{(\alpha)}(p, q) = \mathrm{KL}\big(q \,\|\, (1 - \alpha) p + \alpha q\big)

    ``alpha = 0`` is :math:`\mathrm{KL}(q \| p)`; ``alpha = 1`` is 0.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p.
        alpha: skew in [0, 1] (paper default 0.1).
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Ko, Kim, Chen, Yun. "DistiLLM: Towards Streamlined Distillation for Large Language
        Models", 2024, arXiv 2402.03898, eq. (5).

    Example:
        >>> import math, torch
        >>> logits, target_logits = torch.zeros(2), torch.tensor([math.log(3), 0.0])  # q uniform, p = (3/4, 1/4)
        >>> round(float(skew_reverse_kl(logits, target_logits, alpha=0.0)), 4)  # KL(q || p) = 0.5 log(2/3) + 0.5 log 2
        0.1438
        >>> round(float(skew_reverse_kl(logits, target_logits, alpha=0.5)), 4)  # KL(q || m), m = (5/8, 3/8)
        0.0323
    """
    check_unit_interval("alpha", alpha)
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    return kl_to_mixture(log_q, log_p, 1.0 - alpha)


def skew_kl_with_grad(
    log_q: Tensor, log_p: Tensor, *, alpha: float = 0.1, overwrite_inputs: bool = False,
    scratch: Scratch = FRESH,
) -> tuple[Tensor, Tensor]:
    r"""``(SKL, dSKL/dz)``: with :math:`m = \alpha p + (1 - \alpha) q`,
    :math:`\partial\,\mathrm{SKL} / \partial \log q_i = -(1 - \alpha)\, p_i q_i / m_i`.
    (``overwrite_inputs`` is accepted for the common interface; inputs are left intact.)"""
    check_unit_interval("alpha", alpha)
    if LEAN_WEIGHT_RANGE[0] <= alpha <= LEAN_WEIGHT_RANGE[1]:
        # probability space: two exps, one lerp, one log (the log-space logaddexp form cost 2x)
        p, q = exp_into(scratch, 1, log_p), exp_into(scratch, 2, log_q)
        m = mixture_in_probability_space(q, p, alpha, scratch)  # alpha p + (1 - alpha) q, slot 0
        log_p_over_m = torch.sub(log_p, m.log_(), out=m)  # three [.., V] buffers in all
        value = row_dot(p, log_p_over_m)  # sum p log(p / m)
        if not bool(torch.isnan(value).any()):  # a banned token (p = 0, log p = -inf): the exact form
            grad_log_q = log_p_over_m.exp_().mul_(q).mul_(-(1.0 - alpha))  # -(1-a) q p / m
            return value, project_to_logits(grad_log_q, q)
    p, log_p_over_m = log_ratio_to_mixture(log_p, log_q, 1.0 - alpha)
    q, log_q_over_m = log_ratio_to_mixture(log_q, log_p, alpha)  # m / q = (1 - alpha) + alpha p / q
    grad_log_q = -(1.0 - alpha) * p * torch.where(log_q > -torch.inf, log_q_over_m.exp(), 0.0)
    return (p * log_p_over_m).sum(-1), project_to_logits(grad_log_q, q)


def skew_reverse_kl_with_grad(
    log_q: Tensor, log_p: Tensor, *, alpha: float = 0.1, overwrite_inputs: bool = False,
    scratch: Scratch = FRESH,
) -> tuple[Tensor, Tensor]:
    r"""``(SRKL, dSRKL/dz)``: with :math:`m = (1 - \alpha) p + \alpha q`,
    :math:`\partial\,\mathrm{SRKL} / \partial \log q_i = q_i(\log(q_i/m_i) + 1 - \alpha q_i / m_i)`."""
    check_unit_interval("alpha", alpha)
    if LEAN_WEIGHT_RANGE[0] <= alpha <= LEAN_WEIGHT_RANGE[1]:
        p, q = exp_into(scratch, 1, log_p), exp_into(scratch, 2, log_q)
        m = mixture_in_probability_space(p, q, alpha, scratch)  # (1 - alpha) p + alpha q, slot 0
        q_over_m = torch.div(q, m, out=p)
        log_q_over_m = torch.sub(log_q, m.log_(), out=m)
        value = row_dot(q, log_q_over_m)
        grad_log_q = q_over_m.mul_(-alpha).add_(log_q_over_m).add_(1.0).mul_(q)
        if not bool(torch.isnan(value).any()):  # q = 0 (log q = -inf) somewhere: the exact form
            return value, project_to_logits(grad_log_q, q)
    q, log_q_over_m = log_ratio_to_mixture(log_q, log_p, 1.0 - alpha)
    grad_log_q = q * (log_q_over_m + 1.0 - alpha * log_q_over_m.exp())
    return (q * log_q_over_m).sum(-1), project_to_logits(grad_log_q, q)
