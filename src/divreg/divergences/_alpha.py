"""Alpha-divergence (Amari's family), continuous through its KL endpoints."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import kl_from_log_probs, prepare_log_probs


def _power_sum_minus_one(log_a: Tensor, log_b: Tensor, s: float) -> Tensor:
    """``sum_i a_i^(1-s) b_i^s - 1`` summed over ``a``'s support, for ``s != 0``.

    Each term is ``a_i * expm1(s * log(b_i / a_i))``, which keeps full precision when the
    sum is near zero (s near 0, or a close to b); large exponents switch to a direct
    ``exp``, which cannot overflow for s in (0, 1).
    """
    support = log_a > -math.inf
    log_a_on = torch.where(support, log_a, 0.0)
    z = torch.where(support, s * (log_b - log_a_on), 0.0)
    near_zero = z.abs() < 1.0  # False for +-inf as well
    via_expm1 = log_a_on.exp() * torch.expm1(torch.where(near_zero, z, 0.0))
    via_exp = torch.exp(log_a_on + torch.where(near_zero, 0.0, z)) - log_a_on.exp()
    return torch.where(support, torch.where(near_zero, via_expm1, via_exp), 0.0).sum(-1)


def alpha_divergence(
    logits: Tensor, target_logits: Tensor, *, alpha: float, temperature: float = 1.0, dim: int = -1
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
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}")
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim)
    if alpha == 1.0:
        return kl_from_log_probs(log_p, log_q)
    if alpha == 0.0:
        return kl_from_log_probs(log_q, log_p)
    scale = 1.0 / (alpha * (alpha - 1.0))
    if alpha >= 0.5:
        return scale * _power_sum_minus_one(log_p, log_q, 1.0 - alpha)
    return scale * _power_sum_minus_one(log_q, log_p, alpha)
