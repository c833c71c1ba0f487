"""Total variation distance."""

from __future__ import annotations

from torch import Tensor

from ._common import prepare_log_probs, project_to_logits


def total_variation(logits: Tensor, target_logits: Tensor, *, temperature: float = 1.0, dim: int = -1) -> Tensor:
    r"""Total variation distance, in [0, 1].

    .. math:: \mathrm{TV}(p, q) = \tfrac12 \sum_i |p_i - q_i|

    Its gradient is a sign, undefined where ``p_i = q_i``; autograd uses 0 there.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p.
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Wen, Li, Du, Mou. "f-Divergence Minimization for Sequence-Level Knowledge
        Distillation", 2023, arXiv 2307.15190.

    Example:
        >>> import torch
        >>> total_variation(torch.tensor([30.0, -30.0]), torch.tensor([-30.0, 30.0]))
        tensor(1.)
    """
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def total_variation_with_grad(log_q: Tensor, log_p: Tensor, *, overwrite_inputs: bool = False) -> tuple[Tensor, Tensor]:
    """``(TV, dTV/dz)``: ``dTV/dlog q_i = q_i sign(q_i - p_i) / 2`` (0 at ties)."""
    q, p = log_q.exp(), log_p.exp()
    difference = q - p
    return 0.5 * difference.abs().sum(-1), project_to_logits(0.5 * q * difference.sign(), q)
