"""Total variation distance."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._common import FRESH, Scratch, exp_into, prepare_log_probs, project_to_logits


def total_variation(logits: Tensor, target_logits: Tensor, *, temperature: float = 1.0, dim: int = -1,
        mask: Optional[Tensor] = None) -> Tensor:
    r"""Total variation distance, in [0, 1].

    .. math:: \mathrm{TV}(p, q) = \tfrac12 \sum_i |p_i - q_i|

    Its gradient is a sign, undefined where ``p_i = q_i``; autograd uses 0 there.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p.
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

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
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def total_variation_with_grad(log_q: Tensor, log_p: Tensor, *, overwrite_inputs: bool = False,
                              scratch: Scratch = FRESH) -> tuple[Tensor, Tensor]:
    """``(TV, dTV/dz)``: ``dTV/dlog q_i = q_i sign(q_i - p_i) / 2`` (0 at ties)."""
    q = exp_into(scratch, 0, log_q)
    p = exp_into(scratch, 1, log_p)
    difference = torch.sub(q, p, out=p)  # q - p
    value = 0.5 * torch.linalg.vector_norm(difference, ord=1, dim=-1)
    return value, project_to_logits(difference.sign_().mul_(q).mul_(0.5), q)
