"""Chunked divergence straight from hidden states and output-layer weights: the public entry
points (argument checks and reductions); the chunk loop lives in ``_chunk_loop``."""

from __future__ import annotations

import dataclasses

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from ..divergences import check_divergence_options, check_tail_policy, get_divergence
from ..divergences.kernels import check_temperature
from ..reductions import get_reduction
from ._chunk_loop import FusedLinearDivergenceFunction, Plan, run_chunks
from ._head import check_head
from ._inputs import DEFAULT_MEMORY_BUDGET_MB, flatten_inputs


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
    reduction: Union[str, Callable] = "mean",
    num_items_in_batch: Union[int, float, Tensor, None] = None,
    target_vocab_slice: Optional[int] = None,
    divergence_weight: float = 1.0,
    ce_weight: float = 0.0,
    return_parts: bool = False,
    logit_scale: Optional[float] = None,
    softcap: Optional[float] = None,
    target_logit_scale: Optional[float] = None,
    target_softcap: Optional[float] = None,
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
    token weights, and ``1/Z`` the weights of the reduction, a reduction of
    :mod:`divreg.reductions` (its weights come from :func:`divreg.reductions.position_weights`,
    so the result is exactly what the reduction gives on the plain path): ``Z`` the number of
    valid tokens (``"mean"``), 1 or ``num_items_in_batch`` (``"sum"``), or the sequence's valid
    tokens times the number of non-empty sequences (``"sequence_mean"``). The hard-label
    cross-entropy uses temperature 1.
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
        reduction: a reduction of :mod:`divreg.reductions` (``masked_mean``, ``sum_over_items``,
            ``per_sequence_mean``) or its name (``"mean"`` over valid tokens, ``"sum"``, divided by
            ``num_items_in_batch`` when given: the global count under gradient accumulation,
            ``"sequence_mean"`` for (B, T) inputs), or ``"none"``: per-token values (..., 0 at
            ignored positions), without gradients.
        num_items_in_batch: see ``reduction``.
        target_vocab_slice: when the teacher pads its embedding (same tokenizer, V' > V), pass V
            to use its first V rows. Any other vocabulary mismatch raises ``ValueError``.
        divergence_weight, ce_weight: weights of the two terms (``ce_weight=a,
            divergence_weight=1-a`` is the usual ``a*CE + (1-a)*KD``).
        return_parts: also return the reduced divergence and CE (detached) as a ``FusedOutput``.
        logit_scale, softcap: the student's output head when it transforms ``z`` before the
            softmax: ``s z`` (Cohere's logit scale; Granite's ``z / s`` is ``1 / s``), or
            ``c tanh(s z / c)`` with a softcap ``c`` (Gemma 2/3's final-logit softcapping). The
            CE and the divergence see the transformed logits; the gradient goes through the head.
        target_logit_scale, target_softcap: the same for the teacher's head.

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
    check_divergence_options(divergence, divergence_kwargs)
    plan = _make_plan(get_divergence(divergence).with_grad, divergence_kwargs, temperature, chunk_size,
                      memory_budget_mb, ignore_index, target_vocab_slice, reduction, num_items_in_batch,
                      divergence_weight, ce_weight, labels)
    plan = dataclasses.replace(plan, head=check_head(logit_scale, softcap),
                               target_head=check_head(target_logit_scale, target_softcap, "target_"))
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
    reduction: Union[str, Callable] = "mean",
    num_items_in_batch: Union[int, float, Tensor, None] = None,
    divergence_weight: float = 1.0,
    ce_weight: float = 0.0,
    return_parts: bool = False,
    logit_scale: Optional[float] = None,
    softcap: Optional[float] = None,
) -> Union[Tensor, FusedOutput]:
    r""":func:`divreg.divergences.sparse_kl` to a sparse target (top-k ids and log-probs per
    position, as a teacher cache stores them), computed from the student's hidden states and
    output layer in chunks, like :func:`fused_linear_divergence` (same reductions, weights, CE
    term and gradients). ``temperature`` divides the student's logits only; the target's
    log-probs must be at that temperature already.

    The other arguments are those of :func:`fused_linear_divergence`.

    Args:
        hidden: (..., Hs) the student's hidden states.
        weight: (V, Hs) the student's output layer.
        target_ids, target_logprobs: (..., k) per position.
        target_tail_logmass: (...) log of the target's mass outside ``target_ids`` (optional).
        tail: ``"bucket"`` (exact KL of the coarsened distributions) or ``"renormalize"``.
        logit_scale, softcap: the student's output head, as in :func:`fused_linear_divergence`.

    Example:
        >>> import torch
        >>> from divreg.divergences import sparse_kl
        >>> g = torch.Generator().manual_seed(0)  # any draw: the fused value equals the plain path's
        >>> h, w = (torch.randn(rows, 4, generator=g, dtype=torch.float64) for rows in (6, 10))
        >>> top = torch.randn(6, 10, generator=g, dtype=torch.float64).log_softmax(-1).topk(3)  # a teacher's top 3
        >>> fused = fused_linear_sparse_divergence(h, w, top.indices, top.values, chunk_size=4)
        >>> bool(torch.allclose(fused, sparse_kl(h @ w.T, top.indices, top.values).mean()))
        True
    """
    check_tail_policy(tail)
    plan = _make_plan(None, {"tail": tail}, temperature, chunk_size, memory_budget_mb, ignore_index, None, reduction,
                      num_items_in_batch, divergence_weight, ce_weight, labels)
    plan = dataclasses.replace(plan, head=check_head(logit_scale, softcap))
    return _evaluate(plan, return_parts, hidden, weight, bias, None, None, None, labels, token_weights,
                     (target_ids, target_logprobs, target_tail_logmass))


def _make_plan(with_grad, options, temperature, chunk_size, memory_budget_mb, ignore_index, target_vocab_slice,
               reduction, num_items_in_batch, divergence_weight, ce_weight, labels) -> Plan:
    """Validate the options shared by the dense and sparse entry points."""
    check_temperature(temperature)
    if reduction == "none":
        if num_items_in_batch is not None:
            raise ValueError("num_items_in_batch only applies to a reduction, got reduction='none'")
    else:
        reduction = get_reduction(reduction)
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels for the cross-entropy term")
    for name, value in (("ce_weight", ce_weight), ("divergence_weight", divergence_weight)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return Plan(with_grad, options, float(temperature), chunk_size, memory_budget_mb, ignore_index,
                target_vocab_slice, None if reduction == "none" else reduction, num_items_in_batch,
                float(divergence_weight), float(ce_weight))


def _evaluate(plan, return_parts, hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
              token_weights, sparse):
    if plan.reduction is None:
        return _per_token_values(hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                                 token_weights, plan, sparse)
    ids, logprobs, tail = (None, None, None) if sparse is None else sparse
    output = FusedOutput(*FusedLinearDivergenceFunction.apply(
        hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights, plan, ids, logprobs,
        tail))
    return output if return_parts else output.loss


def _per_token_values(hidden, weight, bias, target_hidden, target_weight, target_bias, labels, token_weights,
                      plan: Plan, sparse) -> Tensor:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        raise ValueError(
            "reduction='none' returns per-token values without gradients; call it under torch.no_grad(), "
            "or use token_weights with reduction='sum' to train on weighted tokens"
        )
    with torch.no_grad():
        flat = flatten_inputs(hidden, weight, bias, target_hidden, target_weight, target_bias, labels,
                              token_weights, plan.ignore_index, plan.target_vocab_slice, sparse)
        totals = run_chunks(flat, weight, bias, plan, None)
        if flat.rows is None:
            return totals.per_token.reshape(hidden.shape[:-1])
        full = torch.zeros(flat.hidden.shape[0], dtype=totals.per_token.dtype, device=weight.device)
        return full.index_copy_(0, flat.rows, totals.per_token).reshape(hidden.shape[:-1])
