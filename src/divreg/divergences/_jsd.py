"""Generalized Jensen-Shannon divergence, plain and scaled (continuous at beta = 0 and 1)."""

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
    expected_log_ratio,
    kl_from_log_probs,
    kl_to_mixture,
    kl_to_mixture_over_w,
    log_mixture,
    log_ratio_to_mixture,
    prepare_log_probs,
)
from ._kl import forward_kl_with_grad, reverse_kl_with_grad


def generalized_jsd(
    logits: Tensor,
    target_logits: Tensor,
    *,
    beta: float = 0.5,
    scaled: bool = False,
    temperature: float = 1.0,
    dim: int = -1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Generalized Jensen-Shannon divergence between the target p and the model q.

    .. math::
        \mathrm{JSD}_\beta(p, q) = \beta\,\mathrm{KL}(p \| m) + (1 - \beta)\,\mathrm{KL}(q \| m),
        \qquad m = \beta p + (1 - \beta) q

    The mixture ``m`` mixes *probabilities*; it is never formed: each term is evaluated as
    :math:`-\sum a_i \log\big((1 - w) + w\, b_i / a_i\big)` with ``log1p``/``expm1`` near zero and
    ``logaddexp`` elsewhere, so it keeps full precision for every beta.

    ``JSD_beta`` tends to 0 at both ends (beta -> 0 or 1), and behaves like
    ``beta * KL(p || q)`` near 0. At beta = 0 or 1 exactly the plain form would be 0 for every
    input and train nothing, so it raises a ``ValueError`` instead. (TRL's ``generalized_jsd_loss``
    returns KL(p || q) at beta = 0 and KL(q || p) at beta = 1: a jump, from about
    ``beta * KL`` just inside the interval to the full KL at its end. divreg keeps the plain form
    continuous and names the alternatives.) ``scaled=True`` returns

    .. math:: \mathrm{JSD}_\beta(p, q) / (\beta (1 - \beta)),

    which is continuous on [0, 1] and equals :math:`\mathrm{KL}(p \| q)` at beta = 0 and
    :math:`\mathrm{KL}(q \| p)` at beta = 1 (taken as limits, not by dividing by zero;
    when the supports differ, the limit also adds the mass that one side puts outside the
    other's support). At beta = 0.5 the plain form is the Jensen-Shannon divergence,
    bounded by log 2.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p.
        beta: mixture weight of the target, in (0, 1); [0, 1] with ``scaled=True``.
        scaled: divide by beta * (1 - beta) (see above).
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Agarwal et al. "On-Policy Distillation of Language Models: Learning from
        Self-Generated Mistakes" (GKD), 2023, arXiv 2306.13649.

    Example:
        >>> import math, torch
        >>> p, q = torch.tensor([20.0, -20.0]), torch.tensor([-20.0, 20.0])
        >>> bool(abs(generalized_jsd(q, p) - math.log(2)) < 1e-6)  # disjoint: log 2
        True
    """
    _check_beta(beta, scaled)
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    if scaled:
        if beta == 0.0:
            return kl_from_log_probs(log_p, log_q) + kl_to_mixture_over_w(log_q, log_p, 0.0)
        if beta == 1.0:
            return kl_to_mixture_over_w(log_p, log_q, 0.0) + kl_from_log_probs(log_q, log_p)
        return kl_to_mixture_over_w(log_p, log_q, 1.0 - beta) + kl_to_mixture_over_w(log_q, log_p, beta)
    return beta * kl_to_mixture(log_p, log_q, 1.0 - beta) + (1.0 - beta) * kl_to_mixture(log_q, log_p, beta)


def generalized_jsd_with_grad(
    log_q: Tensor, log_p: Tensor, *, beta: float = 0.5, scaled: bool = False, overwrite_inputs: bool = False,
    scratch: Scratch = FRESH,
) -> tuple[Tensor, Tensor]:
    r"""``(JSD_beta, dJSD/dz)`` from log-probs, z the tempered logits of q.

    With :math:`m = \beta p + (1 - \beta) q`, :math:`\partial \mathrm{JSD}_\beta / \partial \log q_i
    = (1 - \beta)\, q_i \log(q_i / m_i)`, so :math:`dz = (1 - \beta)\, q\,(\log(q/m) - \mathrm{KL}(q \| m))`.
    """
    _check_beta(beta, scaled)
    if beta in (0.0, 1.0):  # scaled: the limits KL(p || q) and KL(q || p) (plus any mass outside a support)
        extra = kl_to_mixture_over_w(log_q, log_p, 0.0) if beta == 0.0 else kl_to_mixture_over_w(log_p, log_q, 0.0)
        value, grad = (forward_kl_with_grad if beta == 0.0 else reverse_kl_with_grad)(log_q, log_p, scratch=scratch)
        return value + extra, grad
    kl_p_m, kl_q_m, grad = _jsd_parts(log_q, log_p, beta, overwrite_inputs, scratch)
    if scaled:
        return kl_p_m / (1.0 - beta) + kl_q_m / beta, grad.div_(beta)
    return beta * kl_p_m + (1.0 - beta) * kl_q_m, grad.mul_(1.0 - beta)


def _check_beta(beta: float, scaled: bool) -> None:
    check_unit_interval("beta", beta)
    if not scaled and beta in (0.0, 1.0):
        limit = "forward_kl, KL(p || q)" if beta == 0.0 else "reverse_kl, KL(q || p)"
        raise ValueError(
            f"generalized_jsd with beta={beta} and scaled=False is 0 for every input and trains nothing; use "
            f"scaled=True (continuous on [0, 1], equal to {limit.split(', ')[1]} at this beta) or {limit.split(',')[0]}"
        )


def _jsd_parts(log_q: Tensor, log_p: Tensor, beta: float, overwrite_inputs: bool,
               scratch: Scratch) -> tuple[Tensor, Tensor, Tensor]:
    """``(KL(p || m), KL(q || m), q (log(q/m) - KL(q || m)))`` for ``beta in (0, 1)``; in the
    lean range every ``[..., V]`` temporary comes from ``scratch`` (slots 0-2) or the inputs."""
    if not LEAN_WEIGHT_RANGE[0] <= beta <= LEAN_WEIGHT_RANGE[1]:
        q, log_q_over_m = log_ratio_to_mixture(log_q, log_p, beta)
        p, log_p_over_m = log_ratio_to_mixture(log_p, log_q, 1.0 - beta)
        kl_q_m = (q * log_q_over_m).sum(-1)
        kl_p_m = (p * log_p_over_m).sum(-1)
        return kl_p_m, kl_q_m, q * (log_q_over_m - kl_q_m.unsqueeze(-1))
    log_m = log_mixture(log_q, log_p, beta, scratch)  # m = beta p + (1 - beta) q, slot 0
    p = exp_into(scratch, 1, log_p)
    log_p_over_m = log_p.sub_(log_m) if overwrite_inputs else torch.sub(log_p, log_m, out=scratch.like(2, log_p))
    kl_p_m, _ = expected_log_ratio(p, log_p_over_m)
    del p, log_p_over_m
    q = exp_into(scratch, 1, log_q)  # p's slot, free again
    log_q_over_m = log_q.sub_(log_m) if overwrite_inputs else torch.sub(log_q, log_m, out=log_m)
    kl_q_m, meets_zero = expected_log_ratio(q, log_q_over_m)
    grad = log_q_over_m.sub_(kl_q_m.unsqueeze(-1)).mul_(q)
    return kl_p_m, kl_q_m, torch.where(q > 0, grad, 0.0) if meets_zero else grad
