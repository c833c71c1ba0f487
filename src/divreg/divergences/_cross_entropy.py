"""Cross-entropy against a soft target distribution."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ._common import on_support, prepare_log_probs


def cross_entropy(logits: Tensor, target_logits: Tensor, *, temperature: float = 1.0, dim: int = -1,
        mask: Optional[Tensor] = None) -> Tensor:
    r"""Cross-entropy of the model q under a soft target p (not a divergence: it is
    :math:`\mathrm{KL}(p \| q) + H(p)`, so its gradient in q is forward KL's).

    .. math:: H(p, q) = -\sum_i p_i \log q_i

    Soft-label training (PS-KD, label smoothing) uses it with ``target_logits = log(target)``;
    zeros in the target (``-inf``) contribute nothing.

    Args:
        logits: (..., V) the model being trained, distribution q.
        target_logits: (..., V) the target's logits or log-probabilities, distribution p.
        temperature: T > 0, divides both logits before the softmax.
        dim: the class dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    Example:
        >>> import torch
        >>> round(float(cross_entropy(torch.zeros(4), torch.tensor([0.0, -torch.inf, -torch.inf, -torch.inf]))), 4)
        1.3863
    """
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    support, _, p = on_support(log_p)
    return -(p * log_q.where(support, 0.0)).sum(-1)
