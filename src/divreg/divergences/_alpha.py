"""Alpha-divergence (Amari's family), continuous through its KL endpoints."""

from __future__ import annotations

from typing import Optional

import math

import torch
from torch import Tensor

from ._common import FRESH, LEAN_WEIGHT_RANGE, Scratch, exp_into, kl_from_log_probs, on_support, power_terms, prepare_log_probs, project_to_logits
from ._kl import forward_kl_with_grad, reverse_kl_with_grad


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}")


def alpha_divergence(
    logits: Tensor, target_logits: Tensor, *, alpha: float, temperature: float = 1.0, dim: int = -1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Alpha-divergence between the target p and the model q (Amari's parameterization).

    .. math::
        D_\alpha(p \| q) = \frac{\sum_i p_i^\alpha q_i^{1-\alpha} - 1}{\alpha(\alpha - 1)},
        \qquad \alpha \in \mathbb{R}

    It is continuous in alpha, with :math:`D_1 = \mathrm{KL}(p \| q)` (forward, mass-covering)
    and :math:`D_0 = \mathrm{KL}(q \| p)` (reverse, mode-seeking); the endpoints are computed
    as those KLs, never by dividing by zero. ``alpha = 0.5`` is 4 x the squared Hellinger
    distance. The numerator is evaluated as ``sum p * expm1((1 - alpha) log(q / p))`` (for
    alpha >= 0.5; the mirrored form otherwise), so values near the endpoints keep full
    precision. For alpha > 1 (alpha < 0) the value is ``+inf`` where q (p) has a zero that p
    (q) lacks.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p.
        alpha: any finite real number.
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Amari. "Alpha-divergence is unique, belonging to both f-divergence and Bregman
        divergence classes", IEEE Trans. Inf. Theory 55(11), 2009. Cichocki, Amari.
        "Families of Alpha- Beta- and Gamma- Divergences", Entropy 12(6), 2010.

    Example:
        >>> import torch
        >>> from divreg.divergences import forward_kl
        >>> p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        >>> bool(torch.allclose(alpha_divergence(q, p, alpha=1.0), forward_kl(q, p)))
        True
    """
    _check_alpha(alpha)
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    if alpha == 1.0:
        return kl_from_log_probs(log_p, log_q)
    if alpha == 0.0:
        return kl_from_log_probs(log_q, log_p)
    scale = 1.0 / (alpha * (alpha - 1.0))
    if alpha >= 0.5:  # sum p^alpha q^(1-alpha) - 1 = sum over p's support of p * expm1(...)
        return scale * power_terms(log_p, log_q, 1.0 - alpha).sum(-1)
    return scale * power_terms(log_q, log_p, alpha).sum(-1)


def alpha_divergence_with_grad(
    log_q: Tensor, log_p: Tensor, *, alpha: float, overwrite_inputs: bool = False, scratch: Scratch = FRESH,
) -> tuple[Tensor, Tensor]:
    r"""``(D_alpha, dD_alpha/dz)``: :math:`\partial D_\alpha / \partial \log q_i = -p_i^\alpha q_i^{1-\alpha}/\alpha`;
    the part proportional to q (cancelled by the softmax) is dropped, leaving
    :math:`-q_i\,\mathrm{expm1}(\alpha \log(p_i/q_i))/\alpha`, finite as alpha -> 0.
    (``overwrite_inputs`` is accepted for the common interface; inputs are left intact.)"""
    _check_alpha(alpha)
    if alpha == 1.0:
        return forward_kl_with_grad(log_q, log_p, scratch=scratch)
    if alpha == 0.0:
        return reverse_kl_with_grad(log_q, log_p, scratch=scratch)
    scale = 1.0 / (alpha * (alpha - 1.0))
    if LEAN_WEIGHT_RANGE[0] <= alpha <= LEAN_WEIGHT_RANGE[1]:
        power = torch.lerp(log_q, log_p, alpha, out=scratch.like(0, log_q)).exp_()  # p^alpha q^(1-alpha), (..., V)
        total = power.sum(-1, keepdim=True)  # (..., 1)
        if not bool(torch.isnan(total).any()):
            q = exp_into(scratch, 1, log_q)
            return scale * (total.squeeze(-1) - 1.0), q.mul_(total).sub_(power).div_(alpha)
    if alpha >= 0.5:
        value = scale * power_terms(log_p, log_q, 1.0 - alpha).sum(-1)
    else:
        value = scale * power_terms(log_q, log_p, alpha).sum(-1)
    _, _, q = on_support(log_q)
    return value, project_to_logits(-power_terms(log_q, log_p, alpha) / alpha, q)
