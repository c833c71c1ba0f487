"""The chunk loop and autograd function behind :mod:`divreg.fused`.

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

from ..divergences.kernels import Scratch, math_dtype, sparse_kl_with_grad
from ._head import apply_head_, head_derivative
from ._inputs import FlatInputs, choose_chunk_size, flatten_inputs


@dataclass
class Plan:
    """Everything the chunk loop needs besides the tensors."""

    with_grad: Callable  # (log_q, log_p, **options) -> (values, d/d tempered logits)
    options: dict
    temperature: float
    chunk_size: Optional[int]
    memory_budget_mb: float
    ignore_index: int
    target_vocab_slice: Optional[int]
    reduction: Optional[Callable]  # a divreg.reductions function; None: per-token values
    num_items_in_batch: Union[int, float, Tensor, None]
    divergence_weight: float
    ce_weight: float
    head: tuple = (None, None)  # the student's output head: (logit_scale, softcap), see ._head
    target_head: tuple = (None, None)  # the target's


class Totals(NamedTuple):
    divergence: Tensor  # sum over valid tokens of row_weight * token_weight * D (the reduced divergence)
    cross_entropy: Tensor  # sum over valid tokens of row_weight * CE (0 when not asked)
    per_token: Optional[Tensor]  # (n,) weighted combination, for reduction="none"
    count: int  # number of valid tokens


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], dtype: torch.dtype,
            out: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T + bias`` in ``dtype``, written into ``out`` (a workspace view) when given."""
    if out is not None:
        return torch.mm(x, weight.t(), out=out) if bias is None else torch.addmm(bias, x, weight.t(), out=out)
    result = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return result if result.dtype == dtype else result.to(dtype)


# Scratch slots of the chunk loop; 0-3 belong to the divergence forms.
_STUDENT_SLOT, _TARGET_SLOT, _CE_GRAD_SLOT, _HEAD_SLOT = 10, 11, 12, 13


def run_chunks(flat: FlatInputs, weight: Tensor, bias: Optional[Tensor], plan: Plan,
               grads: Optional[tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]]) -> Totals:
    """The chunk loop. ``grads`` = preallocated (dX (N, Hs), dW (V, Hs) fp32+, db (V,)) buffers,
    filled in place, or None for values only. Rows are weighted by the reduction's weights."""
    dtype = math_dtype(weight, flat.hidden, *(() if flat.target_weight is None else (flat.target_weight,)))
    count = flat.count
    chunk = choose_chunk_size(plan.chunk_size, weight.shape[0], count, plan.memory_budget_mb)
    # Finite biases make finite logits, so the divergence may reuse the log-prob buffers.
    overwrite = all(b is None or bool(torch.isfinite(b).all()) for b in (bias, flat.target_bias))
    temperature = plan.temperature
    divergence_total = torch.zeros((), dtype=dtype, device=weight.device)
    ce_total = torch.zeros((), dtype=dtype, device=weight.device)
    per_token = torch.empty(count, dtype=dtype, device=weight.device) if plan.reduction is None else None
    # Every [chunk x V] block of the call (logits, target logits, the divergence's temporaries)
    # is allocated once and reused by every chunk, so the allocator sees the same buffers
    # throughout and peak memory does not depend on how it recycles freed blocks (it did:
    # 73-186 MB for the same call). The logit blocks are written by the matmul itself when the
    # inputs are already in the math dtype (otherwise the matmul's output is converted).
    scratch = Scratch()
    in_math_dtype = all(t is None or t.dtype == dtype for t in (weight, bias, flat.hidden, flat.target_hidden,
                                                                 flat.target_weight, flat.target_bias))
    for start in range(0, count, chunk):
        end = min(start + chunk, count)
        hidden = flat.rows_of(flat.hidden, start, end)  # (c, Hs)
        logits = _linear(hidden, weight, bias, dtype,
                         scratch.block(_STUDENT_SLOT, end - start, weight.shape[0], dtype, weight.device)
                         if in_math_dtype else None)
        head_grad = None  # d(head)/dz of a transformed output head (softcap: per entry), for the chain rule
        if plan.head != (None, None):
            apply_head_(logits, plan.head)
            if grads is not None:
                head_grad = head_derivative(logits, plan.head, scratch.like(_HEAD_SLOT, logits)
                                            if plan.head[1] is not None else None)
        token_weight = None if flat.token_weights is None else flat.token_weights[start:end].to(dtype)  # (c,)
        row_weight = None if flat.row_weights is None else flat.row_weights[start:end].to(dtype)  # (c,)
        ce_grad = None
        if plan.ce_weight:
            labels = flat.labels[start:end, None]  # (c, 1)
            log_z = torch.logsumexp(logits, -1, keepdim=True)  # (c, 1), at temperature 1
            ce = (log_z - logits.gather(-1, labels)).squeeze(-1)  # (c,)
            ce_total += ce.sum() if row_weight is None else (ce * row_weight).sum()
            if grads is not None:
                ce_grad = torch.sub(logits, log_z, out=scratch.like(_CE_GRAD_SLOT, logits)).exp_()  # (c, V)
                ce_grad.scatter_add_(-1, labels, -torch.ones_like(log_z))
        if temperature != 1.0:
            logits.div_(temperature)
        log_q = _log_softmax_in_place(logits)  # (c, V)
        del logits
        values, grad = _target_divergence(flat, log_q, start, end, plan, dtype, overwrite, scratch,
                                          in_math_dtype)  # (c,), (c, V)
        del log_q
        weighted = values if token_weight is None else values * token_weight
        if per_token is not None:
            per_token[start:end] = plan.divergence_weight * weighted + (plan.ce_weight * ce if plan.ce_weight else 0)
        else:
            divergence_total += (weighted * row_weight).sum()
        if grads is not None:
            grad_hidden_rows = _accumulate_grads(grads, grad, ce_grad, hidden, weight, token_weight, row_weight, plan,
                                                 head_grad)
            if grad_hidden_rows is not None:
                if flat.rows is None:
                    grads[0][start:end] = grad_hidden_rows.to(grads[0].dtype)
                else:
                    grads[0].index_copy_(0, flat.rows[start:end], grad_hidden_rows.to(grads[0].dtype))
    if plan.reduction is not None and bool(torch.isnan(divergence_total + ce_total)):
        raise ValueError(
            "the fused divergence is NaN: hidden states, weights or biases contain NaN or +-inf "
            "(a common cause is overflow in low precision)"
        )
    return Totals(divergence_total, ce_total, per_token, count)


def _target_divergence(flat: FlatInputs, log_q: Tensor, start: int, end: int, plan: Plan, dtype: torch.dtype,
                       overwrite: bool, scratch: Scratch, in_math_dtype: bool) -> tuple[Tensor, Tensor]:
    """Values and logit gradient of the chunk's divergence to the dense or sparse target."""
    if flat.sparse is not None:
        ids, logprobs, tail = (None if t is None else flat.rows_of(t, start, end) for t in flat.sparse)
        return sparse_kl_with_grad(log_q, ids, logprobs, tail, tail=plan.options.get("tail", "bucket"),
                                   scratch=scratch)
    out = scratch.block(_TARGET_SLOT, end - start, flat.target_weight.shape[0], dtype, log_q.device) \
        if in_math_dtype else None
    target_logits = _linear(flat.rows_of(flat.target_hidden, start, end), flat.target_weight, flat.target_bias,
                            dtype, out)  # (c, V)
    if plan.target_head != (None, None):
        apply_head_(target_logits, plan.target_head)
    if plan.temperature != 1.0:
        target_logits.div_(plan.temperature)
    log_p = _log_softmax_in_place(target_logits)  # (c, V)
    return plan.with_grad(log_q, log_p, overwrite_inputs=overwrite, scratch=scratch, **plan.options)


def _log_softmax_in_place(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dim, reusing the buffer of ``logits`` on CPU (whose kernel
    reads each row before writing it); elsewhere a new tensor."""
    if logits.device.type == "cpu":
        return torch.log_softmax(logits, -1, out=logits)
    return torch.log_softmax(logits, -1)


def _accumulate_grads(grads, grad: Tensor, ce_grad: Optional[Tensor], hidden: Tensor, weight: Tensor,
                      token_weight: Optional[Tensor], row_weight: Tensor, plan: Plan,
                      head_grad=None) -> Optional[Tensor]:
    """Turn one chunk's gradient w.r.t. the tempered logits into dW and db (accumulated in
    place) and return this chunk's dX rows (or None). ``head_grad``: d(head)/dz of a transformed
    output head (a tensor or a number), applied to both gradients first (the chain rule)."""
    grad_hidden, grad_weight, grad_bias = grads
    if head_grad is not None:
        grad.mul_(head_grad)
        if ce_grad is not None:
            ce_grad.mul_(head_grad)
    row_scale = row_weight[:, None] * (plan.divergence_weight / plan.temperature)  # (c, 1)
    if token_weight is not None:
        row_scale = row_scale * token_weight[:, None]
    if ce_grad is not None:  # one combined logit gradient, scaled per row
        grad.mul_(row_scale).add_(ce_grad.mul_(row_weight[:, None] * plan.ce_weight))
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


class FusedLinearDivergenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights,
                plan: Plan, target_ids, target_logprobs, target_tail_logmass):
        sparse = None if target_ids is None else (target_ids, target_logprobs, target_tail_logmass)
        flat = flatten_inputs(hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                              token_weights, plan.ignore_index, plan.target_vocab_slice, sparse, plan.reduction,
                              plan.num_items_in_batch)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grads = None
        if need_hidden or need_weight or need_bias:
            grad_dtype = torch.promote_types(weight.dtype, torch.float32)
            grads = (
                (torch.empty_like if flat.rows is None else torch.zeros_like)(flat.hidden) if need_hidden else None,
                torch.zeros(weight.shape, dtype=grad_dtype, device=weight.device) if need_weight else None,
                torch.zeros(bias.shape, dtype=grad_dtype, device=weight.device) if need_bias else None,
            )
        totals = run_chunks(flat, weight, bias, plan, grads)
        loss = plan.divergence_weight * totals.divergence + plan.ce_weight * totals.cross_entropy
        divergence, cross_entropy = totals.divergence, totals.cross_entropy
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
