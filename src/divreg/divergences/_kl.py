"""Forward and reverse Kullback-Leibler divergence between tempered softmaxes."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._common import FRESH, Scratch, exp_into, expected_log_ratio, kl_from_log_probs, prepare_log_probs


def forward_kl(logits: Tensor, target_logits: Tensor, *, temperature: float = 1.0, dim: int = -1,
        mask: Optional[Tensor] = None) -> Tensor:
    r"""Forward KL, :math:`\mathrm{KL}(p \,\|\, q)`: mean-seeking, the classic distillation loss.

    .. math::
        \mathrm{KL}(p \| q) = \sum_i p_i (\log p_i - \log q_i),\quad
        q = \mathrm{softmax}(\text{logits} / T),\ p = \mathrm{softmax}(\text{target\_logits} / T)

    with :math:`0 \log 0 = 0`. It is ``+inf`` where the target puts mass on a token the
    model bans (``-inf`` logit), which is the true value.

    Args:
        logits: (..., V) the model being trained (student / policy), distribution q.
        target_logits: (..., V) what it is pulled toward (teacher / reference), distribution p.
        temperature: T > 0, divides both logits before the softmax. No T^2 factor is applied.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``: one value per position, unreduced,
        in fp32 (fp64 for fp64 inputs).

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015,
        arXiv 1503.02531.

    Example:
        >>> import torch
        >>> forward_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([0.])
    """
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    return kl_from_log_probs(log_p, log_q)


def reverse_kl(logits: Tensor, target_logits: Tensor, *, temperature: float = 1.0, dim: int = -1,
        mask: Optional[Tensor] = None) -> Tensor:
    r"""Reverse KL, :math:`\mathrm{KL}(q \,\|\, p)`: mode-seeking (the RLHF penalty direction).

    .. math::
        \mathrm{KL}(q \| p) = \sum_i q_i (\log q_i - \log p_i)

    with :math:`0 \log 0 = 0`; ``+inf`` where the model puts mass on a token the target bans.

    Args:
        logits: (..., V) the model being trained, distribution q.
        target_logits: (..., V) the target, distribution p.
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Gu, Dong, Wei, Huang. "MiniLLM: Knowledge Distillation of Large Language Models",
        2023, arXiv 2306.08543.

    Example:
        >>> import torch
        >>> reverse_kl(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))
        tensor(0.)
    """
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    return kl_from_log_probs(log_q, log_p)


def forward_kl_with_grad(log_q: Tensor, log_p: Tensor, *, overwrite_inputs: bool = False,
                         scratch: Scratch = FRESH) -> tuple[Tensor, Tensor]:
    """``(KL(p || q), dKL/dz)`` from log-probs, z the tempered logits of q: ``dz = q - p``.

    Lean form for the fused kernel: two exps, one subtraction, one batched dot; rows that meet
    ``0 * log 0`` (-inf log-probs) are re-summed with the mask. ``overwrite_inputs=True`` lets
    it reuse the buffers of ``log_q`` and ``log_p`` (saves two ``[..., V]`` temporaries); the
    others come from ``scratch`` (see :class:`~divreg.divergences._common.Scratch`).
    """
    p = exp_into(scratch, 0, log_p)
    difference = log_p.sub_(log_q) if overwrite_inputs else torch.sub(log_p, log_q, out=scratch.like(1, log_p))
    value, _ = expected_log_ratio(p, difference)  # log(p / q) above; its slot is free again below
    grad = log_q.exp_() if overwrite_inputs else exp_into(scratch, 1, log_q)
    return value, grad.sub_(p)


def reverse_kl_with_grad(log_q: Tensor, log_p: Tensor, *, overwrite_inputs: bool = False,
                         scratch: Scratch = FRESH) -> tuple[Tensor, Tensor]:
    """``(KL(q || p), dKL/dz)``: ``dz = q (log q - log p - KL)``, 0 where q = 0.

    ``overwrite_inputs=True`` lets it reuse the buffer of ``log_q``.
    """
    q = exp_into(scratch, 0, log_q)
    log_ratio = log_q.sub_(log_p) if overwrite_inputs else torch.sub(log_q, log_p, out=scratch.like(1, log_q))
    value, meets_zero = expected_log_ratio(q, log_ratio)
    grad = log_ratio.sub_(value.unsqueeze(-1)).mul_(q)
    return value, torch.where(q > 0, grad, 0.0) if meets_zero else grad
