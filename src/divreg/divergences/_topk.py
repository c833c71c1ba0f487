"""KL divergence restricted to the target's top-k tokens."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._common import FRESH, Scratch, kl_from_log_probs, logsumexp_or_neg_inf, neutralize_masked, prepare_log_probs
from ._sparse import check_tail_policy, coarse_log_probs, renormalized_log_probs, sparse_kl_with_grad


def check_k(k: int, vocab_size: int) -> None:
    """Raise ``ValueError`` unless ``1 <= k <= vocab_size``."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= vocab_size:
        raise ValueError(f"k must be an integer in [1, V={vocab_size}], got {k!r}")


def topk_kl(
    logits: Tensor,
    target_logits: Tensor,
    *,
    k: int,
    tail: str = "bucket",
    temperature: float = 1.0,
    dim: int = -1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    r"""Forward KL over the target's top-k tokens, with an explicit policy for the rest.

    Let :math:`S` be the k tokens of highest target probability (ties broken by
    ``torch.topk``).

    ``tail="bucket"``: every other token of each side is collapsed into one tail bucket,
    and the result is the exact KL between these coarsened (k + 1)-outcome distributions,

    .. math::
        \sum_{i \in S} p_i \log\frac{p_i}{q_i} + p_{\bar S} \log\frac{p_{\bar S}}{q_{\bar S}},
        \qquad p_{\bar S} = \sum_{i \notin S} p_i,

    a lower bound of the full :math:`\mathrm{KL}(p \| q)` (data processing), equal to it at
    k = V. The tail masses are log-sum-exps of the left-out log-probs, never ``1 - sum``.

    ``tail="renormalize"``: both sides are renormalized over S and compared there,
    :math:`\mathrm{KL}(\tilde p \| \tilde q)` with :math:`\tilde p_i = p_i / \sum_{j \in S} p_j`
    (OSTQuant's code, its non-default ``post_attn=False`` branch).

    ``tail="none"``: the sum over S of the full-vocabulary terms,
    :math:`\sum_{i \in S} p_i \log(p_i / q_i)`, no tail term and no renormalization. This is
    what OSTQuant's released scripts run (``--loss_type=kl_top --post_attn=True``, k = 1000, no
    temperature, averaged over every position): reproduce it with ``k=1000, tail="none"`` and
    ``masked_mean``. It is not a divergence: it can be negative (where q puts more mass than p
    on S), and it equals the full KL only at k = V.

    Args:
        logits: (..., V) model being trained, distribution q.
        target_logits: (..., V) target, distribution p (its top-k picks S).
        k: number of target tokens kept, 1 <= k <= V.
        tail: ``"bucket"``, ``"renormalize"`` or ``"none"``.
        temperature: T > 0, divides both logits before the softmax.
        dim: the vocabulary dimension.
        mask: (...) bool, optional, the shape of the values: True where a position counts. Elsewhere
            the model's logits are replaced by the target's (detached) before anything is computed,
            so the value there is 0 and its gradient 0, never NaN, whatever the logits hold (a
            token the target bans, -inf or NaN padding). Pass the mask the reduction uses.

    Returns:
        Tensor of shape ``logits.shape`` without ``dim``, unreduced.

    References:
        Hu et al. "OSTQuant: Refining Large Language Model Quantization with Orthogonal and
        Scaling Transformations for Better Distribution Fitting", ICLR 2025, arXiv 2501.13987;
        code github.com/BrotherHappy/OSTQuant ``quant/trainer.py`` (KL-Top).

    Example:
        >>> import torch
        >>> from divreg.divergences import forward_kl
        >>> q, p = torch.randn(3, 8), torch.randn(3, 8)
        >>> bool(torch.allclose(topk_kl(q, p, k=8), forward_kl(q, p)))
        True
    """
    check_tail_policy(tail)
    log_q, log_p = prepare_log_probs(logits, target_logits, temperature, dim, mask)
    check_k(k, log_p.shape[-1])
    top_log_p, top_index = log_p.topk(k, dim=-1)  # (..., k)
    if tail == "renormalize":
        # Renormalize from the tempered logits, not from log_q: log-probs far below 0 carry
        # an absolute rounding error that the renormalization would turn into a relative one.
        logits = neutralize_masked(logits, target_logits, mask, dim)  # as prepare_log_probs did for log_q
        top_scaled_q = logits.movedim(dim, -1).to(log_q.dtype).gather(-1, top_index) / temperature
        top_scaled_p = target_logits.movedim(dim, -1).to(log_p.dtype).gather(-1, top_index) / temperature
        return kl_from_log_probs(torch.log_softmax(top_scaled_p, -1), renormalized_log_probs(top_scaled_q))
    if tail == "none":
        return kl_from_log_probs(top_log_p, log_q.gather(-1, top_index))
    # the target's tail as a log-sum-exp of its left-out log-probs (exact), never 1 - sum
    tail_log_p = logsumexp_or_neg_inf(log_p.scatter(-1, top_index, -torch.inf), -1, keepdim=True)  # (..., 1)
    return kl_from_log_probs(*coarse_log_probs(log_q, top_index, top_log_p, tail_log_p))


def topk_kl_with_grad(
    log_q: Tensor, log_p: Tensor, *, k: int, tail: str = "bucket", overwrite_inputs: bool = False,
    scratch: Scratch = FRESH,
) -> tuple[Tensor, Tensor]:
    """``(top-k KL, d/dz)`` from log-probs: the target's top-k as a sparse target (see
    :func:`divreg.divergences._sparse.sparse_kl_with_grad`)."""
    check_tail_policy(tail)
    check_k(k, log_p.shape[-1])
    top_log_p, top_index = log_p.topk(k, dim=-1)  # (..., k)
    # the target's tail as log(1 - sum of its top-k): its rounding error is weighted by the tail
    # mass itself in the value and the gradient, so it costs no precision there, and no pass over V
    return sparse_kl_with_grad(log_q, top_index, top_log_p, None, tail=tail, scratch=scratch)
