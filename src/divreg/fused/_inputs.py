"""Checking and flattening the inputs of the fused divergence: shapes, the vocabulary policy,
the mask of valid tokens, and the chunk size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

# Live fp32 [chunk x V] buffers at the peak of one chunk (student logits, teacher logits, their
# log-probs, the logit gradient and one divergence temporary); sets the chunk from a budget.
_BUFFERS_PER_ROW = 6
DEFAULT_MEMORY_BUDGET_MB = 128


@dataclass
class FlatInputs:
    """Valid rows only (ignored tokens dropped before any matmul)."""

    hidden: Tensor  # (n, Hs)
    target_hidden: Tensor  # (n, Ht)
    target_weight: Tensor  # (V, Ht), sliced to the student's vocabulary when asked
    target_bias: Optional[Tensor]  # (V,)
    labels: Optional[Tensor]  # (n,)
    token_weights: Optional[Tensor]  # (n,)
    valid: Optional[Tensor]  # (N,) bool over all rows, None when every row is valid
    num_rows: int  # N, before dropping


def resolve_target_vocab(
    weight: Tensor, target_weight: Tensor, target_bias: Optional[Tensor], target_vocab_slice: Optional[int]
) -> tuple[Tensor, Optional[Tensor]]:
    """Apply the explicit vocabulary policy; return the teacher's (weight, bias) over V rows."""
    vocab, target_vocab = weight.shape[0], target_weight.shape[0]
    if target_vocab_slice is not None:
        if target_vocab_slice != vocab or target_vocab_slice > target_vocab:
            raise ValueError(
                f"target_vocab_slice={target_vocab_slice} must equal the student's vocabulary size "
                f"V={vocab} and be <= the teacher's {target_vocab} rows"
            )
        target_weight = target_weight[:vocab]
        target_bias = None if target_bias is None else target_bias[:vocab]
    elif target_vocab != vocab:
        hint = (
            f"if both models share one tokenizer and the teacher pads its embedding matrix, pass "
            f"target_vocab_slice={vocab} to drop the padded rows"
            if target_vocab > vocab
            else "the student is never padded with zero logits (that would give the padded columns real "
            "probability); a smaller teacher vocabulary means different tokenizers"
        )
        raise ValueError(
            f"vocabulary-size mismatch: student weight has V={vocab} rows, teacher weight has {target_vocab}; "
            f"{hint}. Different tokenizers need a cross-tokenizer loss."
        )
    return target_weight, target_bias


def _check_matrix(name: str, tensor: Tensor, rows: Optional[int] = None, columns: Optional[int] = None) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}")
    if rows is not None and tensor.shape[0] != rows:
        raise ValueError(f"{name} has {tensor.shape[0]} rows, expected {rows}")
    if columns is not None and tensor.shape[1] != columns:
        raise ValueError(f"{name} has {tensor.shape[1]} columns, expected {columns} (the hidden size)")


def _check_vector(name: str, tensor: Optional[Tensor], size: int) -> None:
    if tensor is not None and tensor.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(tensor.shape)}")


def flatten_inputs(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target_hidden: Tensor,
    target_weight: Tensor,
    target_bias: Optional[Tensor],
    labels: Optional[Tensor],
    token_weights: Optional[Tensor],
    ignore_index: int,
    target_vocab_slice: Optional[int],
) -> FlatInputs:
    """Check shapes, apply the vocabulary policy, flatten leading dims and drop ignored rows."""
    for name, tensor in (("hidden", hidden), ("weight", weight), ("target_hidden", target_hidden),
                         ("target_weight", target_weight)):
        if not torch.is_floating_point(tensor):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if hidden.dim() < 1 or target_hidden.dim() < 1:
        raise ValueError("hidden and target_hidden must have shape (..., H)")
    _check_matrix("weight", weight, columns=hidden.shape[-1])
    _check_matrix("target_weight", target_weight, columns=target_hidden.shape[-1])
    if hidden.shape[:-1] != target_hidden.shape[:-1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and target_hidden {tuple(target_hidden.shape)} must have the same "
            "leading (token) dimensions"
        )
    _check_vector("bias", bias, weight.shape[0])
    _check_vector("target_bias", target_bias, target_weight.shape[0])
    target_weight, target_bias = resolve_target_vocab(weight, target_weight, target_bias, target_vocab_slice)
    leading = hidden.shape[:-1]
    num_rows = math.prod(leading)
    for name, tensor in (("labels", labels), ("token_weights", token_weights)):
        if tensor is not None and tensor.shape != leading:
            raise ValueError(f"{name} must have shape {tuple(leading)} (hidden's leading dims), got {tuple(tensor.shape)}")
    hidden, target_hidden = hidden.reshape(num_rows, -1), target_hidden.reshape(num_rows, -1)
    labels = None if labels is None else labels.reshape(num_rows)
    if labels is not None and torch.is_floating_point(labels):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    token_weights = None if token_weights is None else token_weights.reshape(num_rows).detach()
    valid = None
    if labels is not None:
        valid = labels != ignore_index
        if bool(valid.all()):
            valid = None
        else:
            hidden, target_hidden, labels = hidden[valid], target_hidden[valid], labels[valid]
            token_weights = None if token_weights is None else token_weights[valid]
    if labels is not None and labels.numel() and not bool(((labels >= 0) & (labels < weight.shape[0])).all()):
        raise ValueError(f"labels must be in [0, {weight.shape[0]}) or equal ignore_index={ignore_index}")
    return FlatInputs(hidden, target_hidden, target_weight, target_bias, labels, token_weights, valid, num_rows)


def choose_chunk_size(chunk_size: Optional[int], vocab: int, num_rows: int, memory_budget_mb: float) -> int:
    """The given chunk size, or the largest that keeps the chunk buffers within the budget."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return chunk_size
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb!r}")
    rows = int(memory_budget_mb * 2**20) // (vocab * 4 * _BUFFERS_PER_ROW)
    return max(1, min(rows, max(num_rows, 1)))
