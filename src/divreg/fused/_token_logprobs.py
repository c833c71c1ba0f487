"""Per-token log-probabilities (and entropies) of given tokens, straight from hidden states and
the output weights, chunked so that the ``[tokens x vocab]`` logits never exist at once; and the
same quantities from logits a model already returned (:func:`token_logprobs`, the dense form)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from ..divergences.kernels import Scratch, check_temperature, log_softmax_checked, math_dtype
from ._inputs import DEFAULT_MEMORY_BUDGET_MB, check_output_layer, choose_chunk_size
from ._head import apply_head_, check_head, head_derivative

_LOGITS_SLOT, _PROBS_SLOT, _GRAD_SLOT, _TARGET_SLOT = 10, 0, 1, 11


class TokenLogprobs(NamedTuple):
    """Per-token log-probabilities and entropies, each shaped like ``token_ids``."""

    logprobs: Tensor
    entropy: Tensor


class TokenStatistics(NamedTuple):
    """What one pass over the vocabulary gives with a target (a reference model), per token,
    each shaped like ``token_ids``: the model's log-probs of the tokens and its entropy, the exact
    ``KL(model || target)`` over the whole vocabulary, and the target's log-probs of the tokens
    (no gradient)."""

    logprobs: Tensor
    entropy: Tensor
    kl: Tensor
    target_logprobs: Tensor


def fused_linear_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    token_ids: Tensor,
    *,
    temperature: float = 1.0,
    bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    ignore_index: int = -100,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    return_entropy: bool = False,
    logit_scale: Optional[float] = None,
    softcap: Optional[float] = None,
    target_hidden: Optional[Tensor] = None,
    target_weight: Optional[Tensor] = None,
    target_bias: Optional[Tensor] = None,
    target_logit_scale: Optional[float] = None,
    target_softcap: Optional[float] = None,
) -> Union[Tensor, TokenLogprobs, TokenStatistics]:
    r"""Log-probabilities of ``token_ids`` under ``softmax((h W^T + b) / T)``, and optionally the
    entropy of that distribution, per token, without the ``[tokens x vocab]`` logits.

    With a target (``target_hidden`` and ``target_weight``: a reference model's final hidden
    states at the same positions and its output layer), the same chunked loop also gives the
    exact reverse KL to the target's ``softmax((h_r W_r^T + b_r) / T)`` and the target's
    log-probs of the tokens, as a :class:`TokenStatistics` (the entropy included): one pass over
    the vocabulary for everything an RL step logs or optimizes (the policy's log-probs and
    entropy, the exact KL to the reference, the reference's log-probs for a sampled estimator).

    .. math::
        \mathrm{KL}(\pi\,\|\,\rho) = \textstyle\sum_j \pi_j (\log\pi_j - \log\rho_j),\qquad
        \partial\mathrm{KL}/\partial z_j = \pi_j(\log\pi_j - \log\rho_j - \mathrm{KL})

    The KL is differentiable with respect to the model's inputs (the target is a constant); the
    target's log-probs carry no gradient.

    .. math::
        z = (h W^\top + b) / T,\qquad \log\pi(y) = z_y - \log\textstyle\sum_j e^{z_j},\qquad
        H = -\textstyle\sum_j \pi_j \log \pi_j

    Differentiable with respect to ``hidden``, ``weight`` and ``bias``, with the analytic
    gradients :math:`\partial\log\pi(y)/\partial z = e_y - \pi` and
    :math:`\partial H/\partial z_j = -\pi_j(\log\pi_j + H)` (then ``/ T`` and the two matmuls).
    The forward pass keeps only ``log sum exp`` and ``H`` per token; the backward pass recomputes
    each chunk's logits (one extra matmul) instead of storing them, so peak extra memory is
    O(chunk x V + V x H) in both passes. Math in fp32 (fp64 for fp64 inputs); the results are
    fp32 (fp64).

    Positions whose token is ``ignore_index`` (e.g. padding after EOS) are never computed: their
    log-prob and entropy are 0 and they get no gradient. A token with logit ``-inf`` (banned by a
    ``-inf`` bias) has log-prob ``-inf``; the entropy ignores such tokens (``0 log 0 = 0``).

    Args:
        hidden: (..., H) final hidden states at the positions that predict ``token_ids``.
        weight: (V, H) output-layer weights (the same dtype as ``hidden``).
        token_ids: (...) integer ids in [0, V), or ``ignore_index``.
        temperature: T > 0; divides the logits (as generation at temperature T samples).
        bias: optional (V,) output bias.
        chunk_size: tokens per chunk; default: the largest that fits ``memory_budget_mb``.
        ignore_index: the id of positions to skip.
        memory_budget_mb: the budget that chooses the chunk size.
        return_entropy: also return the entropy.
        logit_scale, softcap: an output head that transforms ``z = h W^T + b`` before the
            softmax (and the temperature): ``s z``, or ``c tanh(s z / c)`` (Gemma's final-logit
            softcapping); the gradient goes through it.
        target_hidden, target_weight, target_bias: (..., H_r), (V, H_r) and (V,): the target's
            final hidden states (the same leading dims as ``hidden``), output weights and bias.
        target_logit_scale, target_softcap: the target's output head.

    Returns:
        The log-probs, shaped like ``token_ids``; with ``return_entropy``, a
        :class:`TokenLogprobs` ``(logprobs, entropy)``; with a target, a
        :class:`TokenStatistics` ``(logprobs, entropy, kl, target_logprobs)``.

    Example:
        >>> import torch
        >>> h, w, ids = torch.randn(2, 5, 8), torch.randn(50, 8), torch.randint(0, 50, (2, 5))
        >>> expected = torch.log_softmax(h @ w.T, -1).gather(-1, ids[..., None]).squeeze(-1)
        >>> bool(torch.allclose(fused_linear_token_logprobs(h, w, ids), expected, atol=1e-5))
        True
    """
    check_temperature(temperature)
    check_output_layer(hidden, weight, bias)
    head = check_head(logit_scale, softcap)
    valid, ids = _checked_token_ids(token_ids, hidden.shape[:-1], weight.shape[0], ignore_index, "hidden")
    target = None
    if (target_hidden is None) != (target_weight is None):
        raise ValueError("a target needs both target_hidden and target_weight")
    if target_hidden is not None:
        check_output_layer(target_hidden, target_weight, target_bias)
        if target_hidden.shape[:-1] != hidden.shape[:-1] or target_weight.shape[0] != weight.shape[0]:
            raise ValueError(f"the target must score the same positions over the same vocabulary: target_hidden "
                             f"{tuple(target_hidden.shape)} and target_weight {tuple(target_weight.shape)} against "
                             f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}")
        target = (target_hidden.detach(), target_weight.detach(),
                  None if target_bias is None else target_bias.detach(), check_head(target_logit_scale, target_softcap))
    # a target doubles the [chunk x V] blocks alive at once: half the rows per chunk for the same budget
    chunk = choose_chunk_size(chunk_size, weight.shape[0], max(1, ids.numel()),
                              memory_budget_mb if target is None else memory_budget_mb / 2)
    logprobs, entropy, kl, target_logprobs = _TokenLogprobsFunction.apply(
        hidden, weight, bias, token_ids, valid, temperature, chunk, return_entropy or target is not None, head, target)
    if target is not None:
        return TokenStatistics(logprobs, entropy, kl, target_logprobs)
    return TokenLogprobs(logprobs, entropy) if return_entropy else logprobs


def token_logprobs(
    logits: Tensor,
    token_ids: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> Union[Tensor, TokenLogprobs]:
    r""":func:`fused_linear_token_logprobs` from logits that already exist (a model's output):
    ``log softmax(z / T)`` at ``token_ids`` and optionally the entropy, per token, through
    autograd. Use it when the ``[tokens x vocab]`` logits are there anyway (small vocabularies);
    from hidden states the fused form never builds them.

    Only the rows of positions whose token is not ``ignore_index`` are normalized (their
    log-prob and entropy are 0, with no gradient, as in the fused form); the entropy treats a
    ``-inf`` logit as ``0 log 0 = 0`` with a finite gradient. Math in fp32 (fp64 for fp64 logits).

    Args:
        logits: (..., V) unnormalized scores.
        token_ids: (...) integer ids in [0, V), or ``ignore_index``.
        temperature: T > 0; divides the logits.
        ignore_index: the id of positions to skip.
        return_entropy: also return the entropy.

    Returns:
        The log-probs, shaped like ``token_ids``; with ``return_entropy``, a
        :class:`TokenLogprobs` ``(logprobs, entropy)``.

    Example:
        >>> import torch
        >>> z, ids = torch.randn(2, 5, 50), torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
        >>> out = token_logprobs(z, ids, return_entropy=True)
        >>> bool(out.logprobs[0, 3] == 0) and bool(torch.allclose(out.logprobs[1], z[1].log_softmax(-1)[range(5), ids[1]]))
        True
    """
    check_temperature(temperature)
    valid, ids = _checked_token_ids(token_ids, logits.shape[:-1], logits.shape[-1], ignore_index, "logits")
    ids = ids.long()  # (n,)
    dtype = math_dtype(logits)
    log_probs = log_softmax_checked("logits", logits[valid], temperature, dtype)  # (n, V)
    logprobs = torch.zeros(token_ids.shape, dtype=dtype, device=logits.device).masked_scatter(
        valid, log_probs.gather(-1, ids[:, None]).squeeze(-1))
    if not return_entropy:
        return logprobs
    probs = log_probs.exp()
    # 0 log 0 = 0 with a finite gradient: the -inf entries are replaced before the product
    entropy = -(probs * torch.where(probs > 0, log_probs, 0.0)).sum(-1)  # (n,)
    return TokenLogprobs(logprobs, torch.zeros_like(logprobs).masked_scatter(valid, entropy))


def _checked_token_ids(token_ids: Tensor, shape: torch.Size, vocab: int, ignore_index: int,
                       source: str) -> tuple[Tensor, Tensor]:
    """``(valid mask, the valid ids)`` after checking shape, dtype and range (a clear error otherwise)."""
    if token_ids.shape != shape:
        raise ValueError(f"token_ids must have shape {tuple(shape)} ({source}'s leading dims), got "
                         f"{tuple(token_ids.shape)}")
    if torch.is_floating_point(token_ids):
        raise ValueError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}")
    valid = token_ids != ignore_index
    ids = token_ids[valid]
    if ids.numel() and not bool(((ids >= 0) & (ids < vocab)).all()):
        raise ValueError(f"token_ids must be in [0, {vocab}) or equal ignore_index={ignore_index}")
    return valid, ids


def _logits(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], temperature: float, dtype: torch.dtype,
            scratch: Scratch, head=(None, None)) -> Tensor:
    """``head(h W^T + b) / T`` of one chunk in ``dtype``, in a scratch block when no conversion is needed."""
    rows = hidden.shape[0]
    if hidden.dtype == dtype and (bias is None or bias.dtype == dtype):
        out = scratch.block(_LOGITS_SLOT, rows, weight.shape[0], dtype, hidden.device)
        logits = torch.mm(hidden, weight.t(), out=out) if bias is None else torch.addmm(bias, hidden, weight.t(), out=out)
    else:
        logits = (torch.mm(hidden, weight.t()) if bias is None else torch.addmm(bias, hidden, weight.t())).to(dtype)
    if head != (None, None):
        apply_head_(logits, head)
    return logits.div_(temperature) if temperature != 1.0 else logits


def _entropy(log_probs: Tensor, probs: Tensor) -> Tensor:
    """``-sum p log p`` per row with ``0 log 0 = 0`` (a -inf log-prob has p = 0)."""
    value = -torch.matmul(probs.unsqueeze(-2), log_probs.unsqueeze(-1)).reshape(probs.shape[:-1])
    if bool(torch.isnan(value).any()):  # 0 * -inf somewhere: re-sum with the mask
        value = -torch.where(probs > 0, probs * log_probs, 0.0).sum(-1)
    return value


class _TokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids, valid, temperature, chunk, return_entropy, head, target):
        dtype = math_dtype(hidden, weight)
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
        flat_valid = valid.reshape(-1)
        rows = None if bool(flat_valid.all()) else flat_valid.nonzero().squeeze(-1)  # (n,)
        ids = token_ids.reshape(-1).long() if rows is None else token_ids.reshape(-1)[rows].long()  # (n,)
        count = ids.numel()
        log_z = torch.empty(count, dtype=dtype, device=hidden.device)  # (n,)
        entropy = torch.empty(count, dtype=dtype, device=hidden.device) if return_entropy else None
        picked = torch.empty(count, dtype=dtype, device=hidden.device)
        if target is not None:
            t_hidden, t_weight, t_bias, t_head = target
            flat_target = t_hidden.reshape(-1, t_hidden.shape[-1])  # (N, H_r)
            t_log_z = torch.empty(count, dtype=dtype, device=hidden.device)  # (n,)
            t_picked = torch.empty(count, dtype=dtype, device=hidden.device)
            kl = torch.empty(count, dtype=dtype, device=hidden.device)
        scratch = Scratch()
        for start in range(0, count, chunk):
            end = min(start + chunk, count)
            h = flat_hidden[start:end] if rows is None else flat_hidden.index_select(0, rows[start:end])
            logits = _logits(h, weight, bias, temperature, dtype, scratch, head)  # (c, V)
            log_z[start:end] = torch.logsumexp(logits, -1)
            picked[start:end] = logits.gather(-1, ids[start:end, None]).squeeze(-1)
            if target is not None:  # the target's logits of the same rows, in the same pass: z - r
                gaps = _logit_gaps(logits, flat_target, rows, start, end, t_weight, t_bias, temperature, dtype,
                                   scratch, t_head, ids, t_log_z, t_picked)
            if return_entropy:
                log_probs = logits.sub_(log_z[start:end, None])
                probs = torch.exp(log_probs, out=scratch.like(_PROBS_SLOT, log_probs))
                entropy[start:end] = _entropy(log_probs, probs)
            if target is not None:
                kl[start:end] = _reverse_kl(gaps, probs, log_z[start:end] - t_log_z[start:end])
        logprobs = _scattered(picked - log_z, token_ids.shape, rows)
        entropy_out = _scattered(entropy, token_ids.shape, rows) if return_entropy else torch.zeros(
            token_ids.shape, dtype=dtype, device=hidden.device)
        if target is None:
            kl_out = target_out = torch.zeros(token_ids.shape, dtype=dtype, device=hidden.device)
            saved_target = (None, None, None, None, None)
        else:
            kl_out, target_out = _scattered(kl, token_ids.shape, rows), _scattered(t_picked - t_log_z, token_ids.shape,
                                                                                   rows)
            saved_target = (t_hidden, t_weight, t_bias, t_log_z, kl)
        ctx.save_for_backward(hidden, weight, bias, ids, log_z, entropy, rows, *saved_target)
        ctx.temperature, ctx.chunk, ctx.return_entropy, ctx.head = temperature, chunk, return_entropy, head
        ctx.target_head = None if target is None else target[3]
        ctx.mark_non_differentiable(target_out)
        if not return_entropy:
            ctx.mark_non_differentiable(entropy_out)
        if target is None:
            ctx.mark_non_differentiable(kl_out)
        return logprobs, entropy_out, kl_out, target_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy, grad_kl, _grad_target):
        hidden, weight, bias, ids, log_z, entropy, rows, t_hidden, t_weight, t_bias, t_log_z, kl = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        dtype = log_z.dtype
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        grad_dtype = torch.promote_types(weight.dtype, torch.float32)
        grad_hidden = torch.zeros(flat_hidden.shape, dtype=grad_dtype, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=grad_dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=grad_dtype, device=weight.device) if need_bias else None
        g_lp = grad_logprobs.reshape(-1).to(dtype)
        g_h = grad_entropy.reshape(-1).to(dtype) if ctx.return_entropy else None
        g_kl = None if t_hidden is None or grad_kl is None else grad_kl.reshape(-1).to(dtype)
        if rows is not None:
            g_lp = g_lp[rows]
            g_h = None if g_h is None else g_h[rows]
            g_kl = None if g_kl is None else g_kl[rows]
        use_entropy = g_h is not None and bool((g_h != 0).any())
        use_kl = g_kl is not None and bool((g_kl != 0).any())
        flat_target = None if t_hidden is None else t_hidden.reshape(-1, t_hidden.shape[-1])
        scratch = Scratch()
        temperature = ctx.temperature
        for start in range(0, ids.numel(), ctx.chunk):
            end = min(start + ctx.chunk, ids.numel())
            h = flat_hidden[start:end] if rows is None else flat_hidden.index_select(0, rows[start:end])
            logits = _logits(h, weight, bias, temperature, dtype, scratch, ctx.head)  # (c, V), tempered
            head_grad = None if ctx.head == (None, None) else head_derivative(
                logits * temperature, ctx.head)  # d head / dz, from the transformed logits
            if use_kl:
                gaps = _logit_gaps(logits, flat_target, rows, start, end, t_weight, t_bias, temperature, dtype,
                                   scratch, ctx.target_head)
            log_probs = logits.sub_(log_z[start:end, None])  # (c, V)
            probs = torch.exp(log_probs, out=scratch.like(_PROBS_SLOT, log_probs))
            g = g_lp[start:end, None]  # (c, 1)
            grad = torch.mul(probs, -g, out=scratch.like(_GRAD_SLOT, probs))  # d log pi(y) / dz = e_y - pi
            if use_kl:  # dKL/dz_j = pi_j (log pi_j - log rho_j - KL) = pi_j (z_j - r_j - (log Z - log Z_r) - KL)
                offset = log_z[start:end] - t_log_z[start:end] + kl[start:end]
                term = gaps.sub_(offset[:, None]).mul_(probs)
                if not bool(torch.isfinite(term).all()):  # 0 * inf where pi_j = 0 (rho_j = 0 too): 0
                    term = torch.where(probs > 0, term, 0.0)
                grad.addcmul_(term, g_kl[start:end, None])
            if use_entropy:  # dH/dz_j = -pi_j (log pi_j + H)
                term = log_probs.add_(entropy[start:end, None]).mul_(probs)
                if not bool(torch.isfinite(term).all()):
                    term = torch.where(probs > 0, term, 0.0)
                grad.addcmul_(term, g_h[start:end, None], value=-1.0)
            grad.scatter_add_(-1, ids[start:end, None], g)
            if temperature != 1.0:
                grad.div_(temperature)
            if head_grad is not None:
                grad.mul_(head_grad)
            if grad_hidden is not None:
                rows_grad = torch.mm(grad.to(weight.dtype), weight).to(grad_dtype)  # (c, H)
                if rows is None:
                    grad_hidden[start:end] = rows_grad
                else:
                    grad_hidden.index_copy_(0, rows[start:end], rows_grad)
            if grad_weight is not None:
                grad_weight.addmm_(grad.t().to(grad_dtype), h.to(grad_dtype))
            if grad_bias is not None:
                grad_bias.add_(grad.sum(0).to(grad_dtype))
        grad_hidden = None if grad_hidden is None else grad_hidden.reshape(hidden.shape).to(hidden.dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None


def _scattered(values: Tensor, shape: torch.Size, rows: Optional[Tensor]) -> Tensor:
    """``values`` of the computed rows at their places in a zero tensor of ``shape``."""
    out = torch.zeros(shape, dtype=values.dtype, device=values.device)
    if rows is None:
        out.view(-1).copy_(values)
    else:
        out.view(-1).index_copy_(0, rows, values)
    return out


def _logit_gaps(logits: Tensor, flat_target: Tensor, rows: Optional[Tensor], start: int, end: int, weight: Tensor,
                bias: Optional[Tensor], temperature: float, dtype: torch.dtype, scratch: Scratch, head,
                ids: Optional[Tensor] = None, log_z: Optional[Tensor] = None,
                picked: Optional[Tensor] = None) -> Tensor:
    """``z - r`` of one chunk's rows (the model's and the target's tempered logits), in a scratch
    block; in the forward pass also the target's ``log sum exp`` and its logits at ``ids``
    (written into ``log_z`` and ``picked``). The KL is computed from these gaps, not from two
    log-softmaxes: close distributions then lose no precision to cancellation."""
    h = flat_target[start:end] if rows is None else flat_target.index_select(0, rows[start:end])
    out = scratch.block(_TARGET_SLOT, h.shape[0], weight.shape[0], dtype, h.device)
    target = torch.mm(h.to(dtype), weight.t().to(dtype), out=out) if bias is None else torch.addmm(
        bias.to(dtype), h.to(dtype), weight.t().to(dtype), out=out)
    if head != (None, None):
        apply_head_(target, head)
    if temperature != 1.0:
        target.div_(temperature)
    if log_z is not None:
        log_z[start:end] = torch.logsumexp(target, -1)
        picked[start:end] = target.gather(-1, ids[start:end, None]).squeeze(-1)
    return torch.sub(logits, target, out=target)


def _reverse_kl(gaps: Tensor, probs: Tensor, log_z_gap: Tensor) -> Tensor:
    """``sum_j p_j (z_j - r_j) - (log Z - log Z_r)`` per row: ``KL(p || q)`` from the logit gaps,
    with ``0 log 0 = 0`` (a token banned by both: no term; by the target alone: inf)."""
    value = torch.matmul(probs.unsqueeze(-2), gaps.unsqueeze(-1)).reshape(probs.shape[:-1])
    if bool(torch.isnan(value).any()):  # 0 * inf or -inf - (-inf) somewhere: re-sum with the mask
        value = torch.where(probs > 0, probs * gaps, 0.0).sum(-1)
    return value - log_z_gap
