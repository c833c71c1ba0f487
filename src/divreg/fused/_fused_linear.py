"""Chunked divergence straight from hidden states and output-layer weights.

For a chunk of tokens at a time: both logit blocks (one matmul each), their log-softmaxes,
the divergence and its analytic gradient with respect to the student logits, then the
gradient's two matmuls (dX into a preallocated buffer, dW accumulated in place with
``addmm_``). Peak extra memory is O(chunk x V + V x Hs), never O(N x V).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from ..divergences._common import check_temperature, math_dtype
from ..divergences._registry import get_divergence
from ..divergences._sparse import TAIL_POLICIES, sparse_kl_with_grad
from ._inputs import DEFAULT_MEMORY_BUDGET_MB, FlatInputs, choose_chunk_size, flatten_inputs

REDUCTIONS = ("mean", "sum", "none")


@dataclass
class _Plan:
    """Everything the chunk loop needs besides the tensors."""

    with_grad: Callable  # (log_q, log_p, **options) -> (values, d/d tempered logits)
    options: dict
    temperature: float
    chunk_size: Optional[int]
    memory_budget_mb: float
    ignore_index: int
    target_vocab_slice: Optional[int]
    reduction: str
    num_items_in_batch: Union[int, float, Tensor, None]
    divergence_weight: float
    ce_weight: float


class _Totals(NamedTuple):
    divergence: Tensor  # sum over valid tokens of token_weight * D
    cross_entropy: Tensor  # sum over valid tokens of CE (0 when not asked)
    per_token: Optional[Tensor]  # (n,) weighted combination, for reduction="none"
    count: int  # number of valid tokens


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    out = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return out if out.dtype == dtype else out.to(dtype)


def _scale(plan: _Plan, count: int) -> float:
    """The factor that turns sums over tokens into the requested reduction."""
    if plan.reduction == "mean":
        return 1.0 / max(count, 1)
    if plan.num_items_in_batch is None:
        return 1.0
    items = torch.as_tensor(plan.num_items_in_batch)
    if items.numel() != 1 or not bool(items > 0):
        raise ValueError(f"num_items_in_batch must be one positive number, got {plan.num_items_in_batch!r}")
    return 1.0 / float(items)


def _run_chunks(flat: FlatInputs, weight: Tensor, bias: Optional[Tensor], plan: _Plan,
                grads: Optional[tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]],
                scale: float) -> _Totals:
    """The chunk loop. ``grads`` = preallocated (dX (N, Hs), dW (V, Hs) fp32+, db (V,)) buffers,
    filled in place, or None for values only."""
    dtype = math_dtype(weight, flat.hidden, *(() if flat.target_weight is None else (flat.target_weight,)))
    count = flat.count
    chunk = choose_chunk_size(plan.chunk_size, weight.shape[0], count, plan.memory_budget_mb)
    # Finite biases make finite logits, so the divergence may reuse the log-prob buffers.
    overwrite = all(b is None or bool(torch.isfinite(b).all()) for b in (bias, flat.target_bias))
    temperature = plan.temperature
    divergence_total = torch.zeros((), dtype=dtype, device=weight.device)
    ce_total = torch.zeros((), dtype=dtype, device=weight.device)
    per_token = torch.empty(count, dtype=dtype, device=weight.device) if plan.reduction == "none" else None
    for start in range(0, count, chunk):
        end = min(start + chunk, count)
        hidden = flat.rows_of(flat.hidden, start, end)  # (c, Hs)
        logits = _linear(hidden, weight, bias, dtype)  # (c, V)
        token_weight = None if flat.token_weights is None else flat.token_weights[start:end].to(dtype)  # (c,)
        ce_grad = None
        if plan.ce_weight:
            labels = flat.labels[start:end, None]  # (c, 1)
            log_z = torch.logsumexp(logits, -1, keepdim=True)  # (c, 1), at temperature 1
            ce = (log_z - logits.gather(-1, labels)).squeeze(-1)  # (c,)
            ce_total += ce.sum()
            if grads is not None:
                ce_grad = torch.exp(logits - log_z).scatter_add_(-1, labels, -torch.ones_like(log_z))  # (c, V)
        if temperature != 1.0:
            logits.div_(temperature)
        log_q = _log_softmax_in_place(logits)  # (c, V)
        del logits
        values, grad = _target_divergence(flat, log_q, start, end, plan, dtype, overwrite)  # (c,), (c, V)
        del log_q
        weighted = values if token_weight is None else values * token_weight
        divergence_total += weighted.sum()
        if per_token is not None:
            per_token[start:end] = plan.divergence_weight * weighted + (plan.ce_weight * ce if plan.ce_weight else 0)
        if grads is not None:
            grad_hidden_rows = _accumulate_grads(grads, grad, ce_grad, hidden, weight, token_weight, plan, scale)
            if grad_hidden_rows is not None:
                if flat.rows is None:
                    grads[0][start:end] = grad_hidden_rows.to(grads[0].dtype)
                else:
                    grads[0].index_copy_(0, flat.rows[start:end], grad_hidden_rows.to(grads[0].dtype))
    if plan.reduction != "none" and bool(torch.isnan(divergence_total + ce_total)):
        raise ValueError(
            "the fused divergence is NaN: hidden states, weights or biases contain NaN or +-inf "
            "(a common cause is overflow in low precision)"
        )
    return _Totals(divergence_total, ce_total, per_token, count)


def _target_divergence(flat: FlatInputs, log_q: Tensor, start: int, end: int, plan: _Plan, dtype: torch.dtype,
                       overwrite: bool) -> tuple[Tensor, Tensor]:
    """Values and logit gradient of the chunk's divergence to the dense or sparse target."""
    if flat.sparse is not None:
        ids, logprobs, tail = (None if t is None else flat.rows_of(t, start, end) for t in flat.sparse)
        return sparse_kl_with_grad(log_q, ids, logprobs, tail, tail=plan.options.get("tail", "bucket"))
    target_logits = _linear(flat.rows_of(flat.target_hidden, start, end), flat.target_weight, flat.target_bias,
                            dtype)  # (c, V)
    if plan.temperature != 1.0:
        target_logits.div_(plan.temperature)
    log_p = _log_softmax_in_place(target_logits)  # (c, V)
    return plan.with_grad(log_q, log_p, overwrite_inputs=overwrite, **plan.options)


def _log_softmax_in_place(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dim, reusing the buffer of ``logits`` on CPU (whose kernel
    reads each row before writing it); elsewhere a new tensor."""
    if logits.device.type == "cpu":
        return torch.log_softmax(logits, -1, out=logits)
    return torch.log_softmax(logits, -1)


def _accumulate_grads(grads, grad: Tensor, ce_grad: Optional[Tensor], hidden: Tensor, weight: Tensor,
                      token_weight: Optional[Tensor], plan: _Plan, scale: float) -> Optional[Tensor]:
    """Turn one chunk's gradient w.r.t. the tempered logits into dW and db (accumulated in
    place) and return this chunk's dX rows (or None)."""
    grad_hidden, grad_weight, grad_bias = grads
    row_scale = torch.full((grad.shape[0], 1), plan.divergence_weight * scale / plan.temperature,
                           dtype=grad.dtype, device=grad.device)  # (c, 1)
    if token_weight is not None:
        row_scale = row_scale * token_weight[:, None]
    if ce_grad is not None:  # one combined logit gradient, scaled per row
        grad.mul_(row_scale).add_(ce_grad, alpha=plan.ce_weight * scale)
        row_scale = None
    grad_hidden_rows = None
    if grad_hidden is not None:
        grad_hidden_rows = torch.mm(grad.to(weight.dtype), weight)  # (c, Hs)
        if row_scale is not None:
            grad_hidden_rows.mul_(row_scale.to(grad_hidden_rows.dtype))
    scaled_hidden = hidden.to(grad.dtype) if row_scale is None else hidden.to(grad.dtype) * row_scale  # (c, Hs)
    if grad_weight is not None:
        grad_weight.addmm_(grad.t(), scaled_hidden)  # (V, Hs) += (V, c) @ (c, Hs)
    if grad_bias is not None:
        grad_bias.add_(grad.sum(0) if row_scale is None else torch.mv(grad.t(), row_scale.squeeze(-1)))
    return grad_hidden_rows


class _FusedLinearDivergenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights,
                plan: _Plan, target_ids, target_logprobs, target_tail_logmass):
        sparse = None if target_ids is None else (target_ids, target_logprobs, target_tail_logmass)
        flat = flatten_inputs(hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                              token_weights, plan.ignore_index, plan.target_vocab_slice, sparse)
        scale = _scale(plan, flat.count)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grads = None
        if need_hidden or need_weight or need_bias:
            grad_dtype = torch.promote_types(weight.dtype, torch.float32)
            grads = (
                (torch.empty_like if flat.rows is None else torch.zeros_like)(flat.hidden) if need_hidden else None,
                torch.zeros(weight.shape, dtype=grad_dtype, device=weight.device) if need_weight else None,
                torch.zeros(bias.shape, dtype=grad_dtype, device=weight.device) if need_bias else None,
            )
        totals = _run_chunks(flat, weight, bias, plan, grads, scale)
        loss = (plan.divergence_weight * totals.divergence + plan.ce_weight * totals.cross_entropy) * scale
        divergence, cross_entropy = totals.divergence * scale, totals.cross_entropy * scale
        grad_hidden = grad_weight = grad_bias = None
        if grads is not None:
            grad_hidden, grad_weight, grad_bias = grads
            if grad_hidden is not None:
                grad_hidden = grad_hidden.reshape(hidden.shape)
            grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
            grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        # Kept as attributes, not saved tensors, so that backward hands over the only reference
        # and autograd can adopt the buffers as .grad instead of copying them.
        ctx.grads = [grad_hidden, grad_weight, grad_bias]
        ctx.mark_non_differentiable(divergence, cross_entropy)
        return loss.to(torch.promote_types(weight.dtype, torch.float32)), divergence, cross_entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_divergence, _grad_cross_entropy):
        if ctx.grads is None:
            raise RuntimeError("fused_linear_divergence: backward called twice on the same result")
        grads, ctx.grads = ctx.grads, None
        if not bool(grad_loss == 1):
            grads = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads]
        return (*grads, None, None, None, None, None, None, None, None, None)


class FusedOutput(NamedTuple):
    """The loss and its detached parts (each already reduced like the loss)."""

    loss: Tensor
    divergence: Tensor
    cross_entropy: Tensor


def fused_linear_divergence(
    hidden: Tensor,
    weight: Tensor,
    target_hidden: Tensor,
    target_weight: Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    labels: Optional[Tensor] = None,
    ignore_index: int = -100,
    bias: Optional[Tensor] = None,
    target_bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    token_weights: Optional[Tensor] = None,
    reduction: str = "mean",
    num_items_in_batch: Union[int, float, Tensor, None] = None,
    target_vocab_slice: Optional[int] = None,
    divergence_weight: float = 1.0,
    ce_weight: float = 0.0,
    return_parts: bool = False,
    **divergence_kwargs,
) -> Union[Tensor, FusedOutput]:
    r"""A divergence between student and teacher output distributions, computed from hidden
    states and output-layer weights in chunks, never materializing ``[tokens x vocab]`` logits.

    .. math::
        \mathcal{L} = \frac{1}{Z}\sum_{i \in \text{valid}} \Big[ w_D\, t_i\, D\big(\mathrm{softmax}(z_i / T)
        \,\|\, \mathrm{softmax}(z'_i / T)\big) + w_{CE}\, \mathrm{CE}(z_i, y_i) \Big],
        \quad z = h W^\top + b,\ z' = h' W'^\top + b'

    with ``D`` any divergence of :mod:`divreg.divergences` (``divergence`` names it; its options
    such as ``beta``, ``alpha``, ``k``, ``tail`` pass through ``divergence_kwargs``), ``t_i`` the
    token weights, and ``Z`` the number of valid tokens (``reduction="mean"``), 1 or
    ``num_items_in_batch`` (``reduction="sum"``). The hard-label cross-entropy uses temperature 1.
    No ``T^2`` factor is applied. The value equals the plain path (full logits +
    ``divergences.<divergence>`` + reduction).

    Gradients flow to ``hidden``, ``weight`` and ``bias``; the teacher side and ``token_weights``
    are constants. Each chunk's logit gradient is analytic: for :math:`g = \partial D / \partial \log q`,
    :math:`\partial D / \partial z = (g - q \sum g) / T`; it is turned into dX and dW at once, so the
    backward pass only scales stored gradients.

    Args:
        hidden: (..., Hs) student hidden states, aligned with ``labels`` (shift before the call
            for a causal LM: ``hidden[:, :-1]`` with ``labels[:, 1:]``).
        weight: (V, Hs) student output layer.
        target_hidden: (..., Ht) teacher hidden states, same leading dims; Ht may differ from Hs.
        target_weight: (V', Ht) teacher output layer.
        divergence: a name from ``divreg.divergences`` (e.g. ``"forward_kl"``, ``"generalized_jsd"``).
        temperature: T > 0, divides both logits before the softmax.
        labels: (...) token ids; positions equal to ``ignore_index`` are dropped before any matmul.
            Required when ``ce_weight > 0``.
        ignore_index: label of ignored positions.
        bias, target_bias: (V,), (V',) output-layer biases, if any.
        chunk_size: tokens per chunk; by default the largest that fits ``memory_budget_mb``.
        memory_budget_mb: budget for the chunk's ``[chunk x V]`` buffers when ``chunk_size`` is None.
        token_weights: (...) multiply each token's divergence (advantages, per-sample schedules).
        reduction: ``"mean"`` over valid tokens, ``"sum"`` (divided by ``num_items_in_batch`` when
            given: the global count under gradient accumulation), or ``"none"``: per-token values
            (..., 0 at ignored positions), without gradients.
        num_items_in_batch: see ``reduction``.
        target_vocab_slice: when the teacher pads its embedding (same tokenizer, V' > V), pass V
            to use its first V rows. Any other vocabulary mismatch raises ``ValueError``.
        divergence_weight, ce_weight: weights of the two terms (``ce_weight=a,
            divergence_weight=1-a`` is the usual ``a*CE + (1-a)*KD``).
        return_parts: also return the reduced divergence and CE (detached) as a ``FusedOutput``.

    Returns:
        Scalar loss (fp32, or fp64 for fp64 weights), or a ``FusedOutput``; for
        ``reduction="none"`` a tensor of shape ``hidden.shape[:-1]``.

    Example:
        >>> import torch
        >>> from divreg.divergences import forward_kl
        >>> h, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
        >>> ht, wt = torch.randn(6, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
        >>> fused = fused_linear_divergence(h, w, ht, wt, chunk_size=4)
        >>> bool(torch.allclose(fused, forward_kl(h @ w.T, ht @ wt.T).mean()))
        True
    """
    plan = _make_plan(get_divergence(divergence).with_grad, divergence_kwargs, temperature, chunk_size,
                      memory_budget_mb, ignore_index, target_vocab_slice, reduction, num_items_in_batch,
                      divergence_weight, ce_weight, labels)
    return _evaluate(plan, return_parts, hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                     token_weights, None)


def fused_linear_sparse_divergence(
    hidden: Tensor,
    weight: Tensor,
    target_ids: Tensor,
    target_logprobs: Tensor,
    target_tail_logmass: Optional[Tensor] = None,
    *,
    tail: str = "bucket",
    temperature: float = 1.0,
    labels: Optional[Tensor] = None,
    ignore_index: int = -100,
    bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    token_weights: Optional[Tensor] = None,
    reduction: str = "mean",
    num_items_in_batch: Union[int, float, Tensor, None] = None,
    divergence_weight: float = 1.0,
    ce_weight: float = 0.0,
    return_parts: bool = False,
) -> Union[Tensor, FusedOutput]:
    r""":func:`divreg.divergences.sparse_kl` to a sparse target (top-k ids and log-probs per
    position, as a teacher cache stores them), computed from the student's hidden states and
    output layer in chunks, like :func:`fused_linear_divergence` (same reductions, weights, CE
    term and gradients). ``temperature`` divides the student's logits only; the target's
    log-probs must be at that temperature already.

    Args:
        hidden: (..., Hs); weight: (V, Hs).
        target_ids, target_logprobs: (..., k) per position.
        target_tail_logmass: (...) log of the target's mass outside ``target_ids`` (optional).
        tail: ``"bucket"`` (exact KL of the coarsened distributions) or ``"renormalize"``.
        Other arguments: as for :func:`fused_linear_divergence`.
    """
    if tail not in TAIL_POLICIES:
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
    plan = _make_plan(None, {"tail": tail}, temperature, chunk_size, memory_budget_mb, ignore_index, None, reduction,
                      num_items_in_batch, divergence_weight, ce_weight, labels)
    return _evaluate(plan, return_parts, hidden, weight, bias, None, None, None, labels, token_weights,
                     (target_ids, target_logprobs, target_tail_logmass))


def _make_plan(with_grad, options, temperature, chunk_size, memory_budget_mb, ignore_index, target_vocab_slice,
               reduction, num_items_in_batch, divergence_weight, ce_weight, labels) -> _Plan:
    """Validate the options shared by the dense and sparse entry points."""
    check_temperature(temperature)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_items_in_batch is not None and reduction != "sum":
        raise ValueError(f"num_items_in_batch only applies to reduction='sum', got reduction={reduction!r}")
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels for the cross-entropy term")
    for name, value in (("ce_weight", ce_weight), ("divergence_weight", divergence_weight)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return _Plan(with_grad, options, float(temperature), chunk_size, memory_budget_mb, ignore_index,
                 target_vocab_slice, reduction, num_items_in_batch, float(divergence_weight), float(ce_weight))


def _evaluate(plan, return_parts, hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
              token_weights, sparse):
    if plan.reduction == "none":
        return _per_token_values(hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                                 token_weights, plan, sparse)
    ids, logprobs, tail = (None, None, None) if sparse is None else sparse
    output = FusedOutput(*_FusedLinearDivergenceFunction.apply(
        hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights, plan, ids, logprobs,
        tail))
    return output if return_parts else output.loss


def _per_token_values(hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights,
                      plan: _Plan, sparse) -> Tensor:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        raise ValueError(
            "reduction='none' returns per-token values without gradients; call it under torch.no_grad(), "
            "or use token_weights with reduction='sum' to train on weighted tokens"
        )
    with torch.no_grad():
        flat = flatten_inputs(hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                              token_weights, plan.ignore_index, plan.target_vocab_slice, sparse)
        totals = _run_chunks(flat, weight, bias, plan, None, 1.0)
        if flat.rows is None:
            return totals.per_token.reshape(hidden.shape[:-1])
        full = torch.zeros(flat.hidden.shape[0], dtype=totals.per_token.dtype, device=weight.device)
        return full.index_copy_(0, flat.rows, totals.per_token).reshape(hidden.shape[:-1])
