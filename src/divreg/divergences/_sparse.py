"""KL divergence to a sparse target: the target's top-k token ids and log-probabilities (and
the log of the mass it puts on all other tokens), as a cached or served teacher provides."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._common import check_finite_logits, check_temperature, kl_from_log_probs, logsumexp_or_neg_inf, math_dtype
from ._common import FRESH, Scratch, exp_into, log_softmax_checked

TAIL_POLICIES = ("bucket", "renormalize", "none")


def check_tail_policy(tail: str) -> None:
    """``ValueError`` unless ``tail`` is one of :data:`TAIL_POLICIES` (the one place that checks it).

    Example:
        >>> check_tail_policy("bucket")
        >>> check_tail_policy("drop")
        Traceback (most recent call last):
        ...
        ValueError: tail must be one of ('bucket', 'renormalize', 'none'), got 'drop'
    """
    if tail not in TAIL_POLICIES:
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")


def check_sparse_target(
    logits_shape: torch.Size, target_ids: Tensor, target_logprobs: Tensor, target_tail_logmass: Optional[Tensor]
) -> None:
    """Raise ``ValueError`` unless the sparse target fits logits of ``logits_shape`` (..., V).

    Example:
        >>> import torch
        >>> ids, logprobs = torch.tensor([[0, 2]]), torch.tensor([[0.5, 0.25]]).log()
        >>> check_sparse_target(torch.Size([1, 4]), ids, logprobs, None)  # fits logits of shape (1, 4)
        >>> check_sparse_target(torch.Size([1, 4]), torch.tensor([[0, 0]]), logprobs, None)
        Traceback (most recent call last):
        ...
        ValueError: target_ids repeat a token within one position; top-k ids must be distinct
    """
    vocab = logits_shape[-1]
    if target_ids.shape[:-1] != logits_shape[:-1] or target_logprobs.shape != target_ids.shape:
        raise ValueError(
            f"sparse target shapes do not fit: logits {tuple(logits_shape)}, target_ids {tuple(target_ids.shape)}, "
            f"target_logprobs {tuple(target_logprobs.shape)}; expected (..., k) with the logits' leading dims"
        )
    if torch.is_floating_point(target_ids) or not bool(((target_ids >= 0) & (target_ids < vocab)).all()):
        raise ValueError(f"target_ids must be integer token ids in [0, V={vocab})")
    if target_ids.shape[-1] > 1 and bool((target_ids.sort(-1).values.diff(dim=-1) == 0).any()):
        raise ValueError("target_ids repeat a token within one position; top-k ids must be distinct")
    if bool(torch.isnan(target_logprobs).any()) or bool((target_logprobs > 1e-6).any()):
        raise ValueError("target_logprobs must be log-probabilities (<= 0, -inf allowed, no NaN)")
    if bool((torch.logsumexp(target_logprobs.double(), -1) > 1e-4).any()):
        raise ValueError("target_logprobs sum to more than 1 at some position; they must be log-probabilities")
    if target_tail_logmass is not None and target_tail_logmass.shape != target_ids.shape[:-1]:
        raise ValueError(f"target_tail_logmass must have shape {tuple(target_ids.shape[:-1])}")


def _tail_of_target(target_logprobs: Tensor, target_tail_logmass: Optional[Tensor]) -> Tensor:
    """(..., 1) log of the target mass outside its top-k: given, or log(1 - sum p_top)."""
    if target_tail_logmass is not None:
        return target_tail_logmass.unsqueeze(-1).to(target_logprobs.dtype)
    covered = target_logprobs.exp().sum(-1, keepdim=True)
    return torch.where(covered < 1, torch.log1p(-covered.clamp(max=1.0)), -torch.inf)


def coarse_log_probs(log_q: Tensor, target_ids: Tensor, top_log_p: Tensor, tail_log_p: Tensor) -> tuple[Tensor, Tensor]:
    """(k + 1)-outcome log-probs ``(target's, model's)``: the listed tokens, then the rest
    (no rest when every token is listed: a derived tail would only be rounding)."""
    top_log_q = log_q.gather(-1, target_ids)  # (..., k)
    if target_ids.shape[-1] == log_q.shape[-1]:
        return top_log_p, top_log_q
    tail_log_q = logsumexp_or_neg_inf(log_q.scatter(-1, target_ids, -torch.inf), -1, keepdim=True)  # (..., 1)
    return torch.cat([top_log_p, tail_log_p], -1), torch.cat([top_log_q, tail_log_q], -1)


def renormalized_log_probs(top_log: Tensor) -> Tensor:
    """log-softmax over the listed tokens; all ``-inf`` stays ``-inf`` (no mass there)."""
    empty = (top_log == -torch.inf).all(-1, keepdim=True)
    return torch.where(empty, -torch.inf, torch.log_softmax(torch.where(empty, 0.0, top_log), -1))


def sparse_kl_from_log_probs(
    log_q: Tensor, target_ids: Tensor, target_logprobs: Tensor, target_tail_logmass: Optional[Tensor] = None,
    *, tail: str = "bucket",
) -> Tensor:
    """:func:`sparse_kl` on the model's log-probabilities ``log_q`` (..., V)."""
    top_log_p = target_logprobs.to(log_q.dtype)
    if tail == "renormalize":
        return kl_from_log_probs(renormalized_log_probs(top_log_p), renormalized_log_probs(log_q.gather(-1, target_ids)))
    if tail == "none":  # full-vocabulary probabilities on S, nothing for the rest
        return kl_from_log_probs(top_log_p, log_q.gather(-1, target_ids))
    return kl_from_log_probs(*coarse_log_probs(log_q, target_ids, top_log_p, _tail_of_target(top_log_p, target_tail_logmass)))


def sparse_kl(
    logits: Tensor,
    target_ids: Tensor,
    target_logprobs: Tensor,
    target_tail_logmass: Optional[Tensor] = None,
    *,
    tail: str = "bucket",
    temperature: float = 1.0,
) -> Tensor:
    r"""Forward KL from a sparse target: its top-k token ids S, their log-probabilities, and
    the log of its remaining mass.

    ``tail="bucket"``: the KL between the (k + 1)-outcome distributions (S, then everything else
    as one bucket), exact for the information the target gives,

    .. math:: \sum_{i \in S} p_i \log\frac{p_i}{q_i} + p_{\bar S}\log\frac{p_{\bar S}}{q_{\bar S}};

    ``tail="renormalize"``: forward KL on the support S with both sides renormalized there.
    ``tail="none"``: :math:`\sum_{i \in S} p_i \log(p_i / q_i)` with the full-vocabulary
    probabilities, no tail term and no renormalization (not a divergence: it can be negative;
    OSTQuant's released KL-Top). With S the target's top-k of a dense target this equals
    :func:`topk_kl`.

    ``temperature`` divides the model's logits only: the target's log-probabilities are used as
    given, so they must have been computed at the same temperature (a cache records its own).

    Args:
        logits: (..., V) the model being trained, distribution q.
        target_ids: (..., k) distinct token ids per position.
        target_logprobs: (..., k) the target's log-probabilities of those tokens.
        target_tail_logmass: (...) log of the target's mass outside ``target_ids``; by default
            ``log(1 - sum exp(target_logprobs))``.
        tail: ``"bucket"``, ``"renormalize"`` or ``"none"``.
        temperature: T > 0 for the model's logits.

    Returns:
        Tensor of shape ``logits.shape[:-1]``, unreduced.

    References:
        Hu et al. "OSTQuant", ICLR 2025, arXiv 2501.13987 (KL-Top: ``tail="none"`` in its
        released scripts, ``"renormalize"`` in the code's non-default branch).

    Example:
        >>> import math, torch
        >>> # the target's top-1 is token 0 with 3/4 (the rest 1/4, one bucket); q is uniform on 4 tokens
        >>> value = sparse_kl(torch.zeros(4), torch.tensor([0]), torch.tensor([0.75]).log())
        >>> round(float(value), 4), round(0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.75), 4)
        (0.5493, 0.5493)
    """
    check_tail_policy(tail)
    check_temperature(temperature)
    check_finite_logits("logits", logits)
    check_sparse_target(logits.shape, target_ids, target_logprobs, target_tail_logmass)
    log_q = log_softmax_checked("logits", logits, temperature, math_dtype(logits, target_logprobs))
    return sparse_kl_from_log_probs(log_q, target_ids.long(), target_logprobs, target_tail_logmass, tail=tail)


def sparse_kl_with_grad(
    log_q: Tensor, target_ids: Tensor, target_logprobs: Tensor, target_tail_logmass: Optional[Tensor] = None,
    *, tail: str = "bucket", scratch: Scratch = FRESH,
) -> tuple[Tensor, Tensor]:
    r"""``(sparse KL, d/dz)`` from log-probs, z the tempered logits of q.

    Bucket: :math:`dz_i = q_i - p_i` on S and :math:`q_i (1 - p_{\bar S} / q_{\bar S})` off it.
    Renormalize: :math:`dz_i = \tilde q_i - \tilde p_i` on S, 0 off it.
    None: :math:`dz_j = q_j \sum_{i \in S} p_i - p_j [j \in S]`.

    Example:
        >>> import math, torch
        >>> # q uniform on 4 tokens; the target: token 0 with 3/4, the rest 1/4 (as in sparse_kl's example)
        >>> log_q, ids, log_p = torch.zeros(1, 4).log_softmax(-1), torch.tensor([[0]]), torch.tensor([[0.75]]).log()
        >>> value, grad = sparse_kl_with_grad(log_q, ids, log_p)
        >>> round(float(value), 4), round(0.5 * math.log(3), 4)
        (0.5493, 0.5493)
        >>> [round(v, 4) for v in grad[0].tolist()]  # q - p on S; q (1 - p_rest / q_rest) = (1/4)(2/3) off S
        [-0.5, 0.1667, 0.1667, 0.1667]
    """
    check_tail_policy(tail)
    target_ids = target_ids.long()
    top_log_p = target_logprobs.to(log_q.dtype)
    if tail == "renormalize":
        renormalized_p, renormalized_q = renormalized_log_probs(top_log_p), renormalized_log_probs(log_q.gather(-1, target_ids))
        grad_top = renormalized_q.exp() - renormalized_p.exp()
        return (kl_from_log_probs(renormalized_p, renormalized_q),
                scratch.like(0, log_q).zero_().scatter_(-1, target_ids, grad_top))
    if tail == "none":
        top_p = top_log_p.exp()  # (..., k)
        grad = exp_into(scratch, 0, log_q).mul_(top_p.sum(-1, keepdim=True)).scatter_add_(-1, target_ids, -top_p)
        return kl_from_log_probs(top_log_p, log_q.gather(-1, target_ids)), grad
    if target_ids.shape[-1] == log_q.shape[-1]:
        value = kl_from_log_probs(top_log_p, log_q.gather(-1, target_ids))
        return value, scratch.like(0, log_q).zero_().scatter_(-1, target_ids, log_q.gather(-1, target_ids).exp() - top_log_p.exp())
    top_log_q = log_q.gather(-1, target_ids)  # (..., k)
    off_support = exp_into(scratch, 0, log_q).scatter_(-1, target_ids, 0.0)  # (..., V): q off S (the gradient's base below)
    tail_log_q = _tail_log_mass(off_support, log_q, target_ids)  # (..., 1)
    tail_log_p = _tail_of_target(top_log_p, target_tail_logmass)  # (..., 1)
    value = kl_from_log_probs(torch.cat([top_log_p, tail_log_p], -1), torch.cat([top_log_q, tail_log_q], -1))
    tail_ratio = torch.where(tail_log_p > -torch.inf, (tail_log_p - tail_log_q).exp(), 0.0)  # p_tail / q_tail
    grad = off_support.mul_(1.0 - tail_ratio)
    return value, grad.scatter_(-1, target_ids, top_log_q.exp() - top_log_p.exp())


def _tail_log_mass(off_support: Tensor, log_q: Tensor, target_ids: Tensor) -> Tensor:
    """log of q's mass off S, summed in probability space (no cancellation); rows whose tail is
    so small that its terms underflow are redone in log space."""
    tail = off_support.sum(-1, keepdim=True)  # (..., 1)
    tail_log = tail.log()
    tiny = (tail < torch.finfo(tail.dtype).tiny * log_q.shape[-1]).squeeze(-1)  # (...)
    if bool(tiny.any()):
        exact = logsumexp_or_neg_inf(log_q[tiny].scatter(-1, target_ids[tiny], -torch.inf), -1, keepdim=True)
        tail_log = tail_log.masked_scatter(tiny.unsqueeze(-1), exact)
    return tail_log
