"""Checking and flattening the inputs of the fused divergence: shapes, the vocabulary policy,
the mask of valid tokens, and the chunk size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..divergences.kernels import check_sparse_target
from ..reductions import position_weights

# Live fp32 [chunk x V] buffers at the peak of one chunk: the two log-prob blocks, the logit
# gradient and the divergence's temporaries (5 for forward KL, up to 8 for the mixtures).
_BUFFERS_PER_ROW = 8
DEFAULT_MEMORY_BUDGET_MB = 128
# Fewer rows than this make the chunk matmuls inefficient (the weight gradient, read and written once per chunk,
# dominates): the budget yields below it. Measured (benchmarks/fused_divergence.py --budget-mb, N=4096, H=512,
# V=128000, warm): 64-row chunks reach 72-73% of a plain fp32 matmul's throughput, 128-row chunks 81-87%, for
# about 90-125 MB more peak memory; from V=32768 down, the budget gives 128 rows or more anyway.
_MIN_ROWS = 128


@dataclass
class FlatInputs:
    """Flattened inputs and the valid rows (ignored tokens are never fed to a matmul)."""

    hidden: Tensor  # (N, Hs), all rows (a view when possible, never a copy of the valid ones)
    target_hidden: Optional[Tensor]  # (N, Ht); None for a sparse target
    target_weight: Optional[Tensor]  # (V, Ht), sliced to the student's vocabulary when asked
    target_bias: Optional[Tensor]  # (V,)
    sparse: Optional[tuple]  # (ids (N, k), logprobs (N, k), tail log-mass (N,) or None) of a sparse target
    labels: Optional[Tensor]  # (n,) labels of the valid rows
    token_weights: Optional[Tensor]  # (n,) weights of the valid rows (the divergence term only)
    row_weights: Optional[Tensor]  # (n,) float64 weights of the reduction (both terms); None: per-token values
    rows: Optional[Tensor]  # (n,) indices of the valid rows, None when every row is valid
    count: int  # n, the number of valid rows

    def rows_of(self, tensor: Tensor, start: int, end: int) -> Tensor:
        """Valid rows ``start:end`` (in valid-row numbering) of an (N, ...) tensor."""
        return tensor[start:end] if self.rows is None else tensor.index_select(0, self.rows[start:end])


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


def _check_same_dtype(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Hidden states and the weight that reads them must share a dtype (the math is fp32 either
    way; the matmul itself runs in their dtype)."""
    if a.dtype != b.dtype:
        raise ValueError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}; give them in the same dtype, e.g. "
                         f"{name_a}.to({name_b}.dtype) (the divergence is computed in fp32 either way)")


def _check_vector(name: str, tensor: Optional[Tensor], size: int) -> None:
    if tensor is not None and tensor.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(tensor.shape)}")


def check_output_layer(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """The model side of every fused entry point: floating-point ``hidden`` (..., H) and
    ``weight`` (V, H) in one dtype, and an optional ``bias`` (V,)."""
    for name, tensor in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if tensor is not None and type(tensor).__name__ == "DTensor":  # a shard would be gathered chunk by chunk
            raise ValueError(f"{name} is a sharded DTensor (FSDP / tensor parallel): gather it once before the call "
                             f"({name}.full_tensor(), or read it after the model's forward, where FSDP gathers it); "
                             "the kernel reads it chunk by chunk")
    for name, tensor in (("hidden", hidden), ("weight", weight)):
        if not torch.is_floating_point(tensor):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape (..., H)")
    _check_same_dtype("hidden", hidden, "weight", weight)
    _check_matrix("weight", weight, columns=hidden.shape[-1])
    _check_vector("bias", bias, weight.shape[0])


def _check_dense_target(hidden, weight, target_hidden, target_weight, target_bias, target_vocab_slice):
    if not torch.is_floating_point(target_hidden) or not torch.is_floating_point(target_weight):
        raise ValueError("target_hidden and target_weight must be floating-point tensors")
    if target_hidden.dim() < 1:
        raise ValueError("target_hidden must have shape (..., H)")
    _check_matrix("target_weight", target_weight, columns=target_hidden.shape[-1])
    if hidden.shape[:-1] != target_hidden.shape[:-1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and target_hidden {tuple(target_hidden.shape)} must have the same "
            "leading (token) dimensions"
        )
    _check_vector("target_bias", target_bias, target_weight.shape[0])
    return resolve_target_vocab(weight, target_weight, target_bias, target_vocab_slice)


def flatten_inputs(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target_hidden: Optional[Tensor],
    target_weight: Optional[Tensor],
    target_bias: Optional[Tensor],
    labels: Optional[Tensor],
    token_weights: Optional[Tensor],
    ignore_index: int,
    target_vocab_slice: Optional[int],
    sparse: Optional[tuple] = None,
    reduction=None,
    num_items_in_batch=None,
) -> FlatInputs:
    """Check shapes, apply the vocabulary policy, flatten leading dims and drop ignored rows.
    The target is dense (``target_hidden``, ``target_weight``) or ``sparse`` (ids, logprobs, tail).
    ``reduction`` (a :mod:`divreg.reductions` function, or None for per-token values) gives the
    rows' weights through :func:`divreg.reductions.position_weights`."""
    check_output_layer(hidden, weight, bias)
    if target_hidden is not None and target_weight is not None:
        _check_same_dtype("target_hidden", target_hidden, "target_weight", target_weight)
    leading = hidden.shape[:-1]
    num_rows = math.prod(leading)
    if sparse is None:
        target_weight, target_bias = _check_dense_target(hidden, weight, target_hidden, target_weight, target_bias,
                                                         target_vocab_slice)
        target_hidden = target_hidden.reshape(num_rows, -1)
    else:
        ids, logprobs, tail = sparse
        check_sparse_target(torch.Size([*leading, weight.shape[0]]), ids, logprobs, tail)
        sparse = (ids.reshape(num_rows, -1).long(), logprobs.reshape(num_rows, -1),
                  None if tail is None else tail.reshape(num_rows))
    for name, tensor in (("labels", labels), ("token_weights", token_weights)):
        if tensor is not None and tensor.shape != leading:
            raise ValueError(f"{name} must have shape {tuple(leading)} (hidden's leading dims), got {tuple(tensor.shape)}")
    hidden = hidden.reshape(num_rows, -1)
    labels = None if labels is None else labels.reshape(num_rows)
    if labels is not None and torch.is_floating_point(labels):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    token_weights = None if token_weights is None else token_weights.reshape(num_rows).detach()
    valid = None if labels is None else labels != ignore_index  # (N,)
    row_weights = None
    if reduction is not None:
        mask = torch.ones(leading, dtype=torch.bool, device=hidden.device) if valid is None else valid.view(leading)
        row_weights = position_weights(reduction, mask, num_items_in_batch).reshape(num_rows)  # (N,)
    rows = None
    if valid is not None and not bool(valid.all()):
        rows = valid.nonzero().squeeze(-1)  # (n,)
        labels = labels[rows]
        token_weights = None if token_weights is None else token_weights[rows]
        row_weights = None if row_weights is None else row_weights[rows]
    if labels is not None and labels.numel() and not bool(((labels >= 0) & (labels < weight.shape[0])).all()):
        raise ValueError(f"labels must be in [0, {weight.shape[0]}) or equal ignore_index={ignore_index}")
    count = num_rows if rows is None else rows.numel()
    return FlatInputs(hidden, target_hidden, target_weight, target_bias, sparse, labels, token_weights, row_weights,
                      rows, count)


def choose_chunk_size(chunk_size: Optional[int], vocab: int, num_rows: int, memory_budget_mb: float) -> int:
    """The given chunk size, or the largest multiple of 32 whose chunk buffers fit the budget
    (at least 128 rows)."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return chunk_size
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb!r}")
    rows = int(memory_budget_mb * 2**20) // (vocab * 4 * _BUFFERS_PER_ROW)
    rows = max(_MIN_ROWS, rows // 32 * 32)  # multiples of 32 keep the matmuls efficient
    return max(1, min(rows, num_rows))
