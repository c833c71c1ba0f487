"""Reducers: turn per-position loss values into one scalar, masking ignored positions.

Every reducer returns a zero that keeps the autograd graph when no position is valid
(``loss.backward()`` works and gives zero gradients), never ``nan``; values at masked
positions are never read (they may be ``inf`` or ``nan``).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sequence_mean", "sum", "none")

Count = Union[int, float, Tensor, None]


def mask_from_labels(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Boolean mask of the positions whose label is not ``ignore_index``.

    Args:
        labels: (...) integer labels.
        ignore_index: label value that marks a position to leave out.

    Returns:
        Bool tensor of the same shape.

    Example:
        >>> import torch
        >>> mask_from_labels(torch.tensor([5, -100, 7])).tolist()
        [True, False, True]
    """
    if torch.is_floating_point(labels):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels != ignore_index


def _masked(values: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(values with masked positions set to 0, bool mask), after checking shapes."""
    if mask is None:
        return values, torch.ones_like(values, dtype=torch.bool)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}; use labels != ignore_index")
    if mask.shape != values.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match values shape {tuple(values.shape)}"
        )
    return torch.where(mask, values, 0.0), mask


def _no_global_count(name: str, num_items_in_batch: Count) -> None:
    if num_items_in_batch is not None:
        raise ValueError(
            f"num_items_in_batch only applies to reduction='sum' (sum_over_items) or 'sequence_mean' (global counts "
            f"under gradient accumulation and several processes); {name} divides by this batch's own positions"
        )


def masked_mean(values: Tensor, mask: Optional[Tensor] = None, num_items_in_batch: Count = None) -> Tensor:
    r"""Mean over the valid positions: :math:`\sum_i m_i v_i / \max(1, \sum_i m_i)`.

    Args:
        values: (...) per-position values.
        mask: (...) bool, True where a position counts; None counts all.
        num_items_in_batch: must be None (present so every reduction has one signature).

    Returns:
        Scalar tensor; 0 (with graph) when nothing is valid.

    Example:
        >>> import torch
        >>> float(masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, True, False])))
        1.5
    """
    _no_global_count("masked_mean", num_items_in_batch)
    kept, mask = _masked(values, mask)
    return kept.sum() / mask.sum().clamp(min=1)


def per_sequence_mean(values: Tensor, mask: Optional[Tensor] = None, num_items_in_batch: Count = None) -> Tensor:
    r"""Mean over each sequence's valid positions, then mean over sequences.

    .. math:: \frac{1}{S} \sum_{b \in B'} \frac{\sum_t m_{bt} v_{bt}}{\sum_t m_{bt}}

    where :math:`B'` are the sequences with at least one valid position (the others are
    left out rather than counted as zero) and S is :math:`|B'|`, or ``num_items_in_batch``
    when given: the number of such sequences in the *global* batch (every accumulation
    micro-batch on every process), so that summing the micro-batch values gives the
    per-sequence mean of the global batch however it was split. Every sequence weighs the
    same, whatever its length.

    Args:
        values: (B, T, ...) per-position values; dim 0 is the sequence.
        mask: same shape, bool; None counts all.
        num_items_in_batch: the global number of sequences with a valid position.

    Returns:
        Scalar tensor; 0 (with graph) when nothing is valid.

    Example:
        >>> import torch
        >>> values = torch.tensor([[1.0, 3.0, 0.0], [10.0, 0.0, 0.0]])
        >>> mask = torch.tensor([[True, True, False], [True, False, False]])
        >>> float(per_sequence_mean(values, mask))  # (mean(1, 3) + 10) / 2; the token mean would be 14 / 3
        6.0
    """
    if values.dim() < 2:
        raise ValueError(f"per_sequence_mean needs values of shape (B, T, ...), got {tuple(values.shape)}")
    kept, mask = _masked(values, mask)
    counts = mask.flatten(1).sum(1)  # (B,)
    sequence_means = kept.flatten(1).sum(1) / counts.clamp(min=1)  # (B,)
    if num_items_in_batch is None:
        return sequence_means.sum() / (counts > 0).sum().clamp(min=1)
    return sequence_means.sum() / _global_count(num_items_in_batch, sequence_means)


def _global_count(num_items_in_batch: Count, like: Tensor) -> Tensor:
    count = torch.as_tensor(num_items_in_batch, device=like.device)
    if count.numel() != 1 or not bool(count > 0):
        raise ValueError(f"num_items_in_batch must be one positive number, got {num_items_in_batch!r}")
    return count.to(like.dtype)


def sum_over_items(values: Tensor, mask: Optional[Tensor] = None, num_items_in_batch: Count = None) -> Tensor:
    r"""Sum over valid positions divided by ``num_items_in_batch``.

    With ``num_items_in_batch`` the number of valid positions in the *global* batch (all
    gradient-accumulation micro-batches and all processes), summing these per micro-batch
    losses gives exactly the token mean of the global batch, so gradients do not depend on
    how the batch was split. (Under DDP, which averages gradients over processes, multiply
    the loss by the number of processes.) Without it, this is the plain masked sum.

    Args:
        values: (...) per-position values.
        mask: (...) bool, True where a position counts; None counts all.
        num_items_in_batch: positive count (int or scalar tensor) to divide by.

    Returns:
        Scalar tensor; 0 (with graph) when nothing is valid.

    Example:
        >>> import torch
        >>> # 3 valid tokens in the global batch, split in two micro-batches: the parts add up to the token mean
        >>> first = sum_over_items(torch.tensor([1.0, 2.0]), num_items_in_batch=3)
        >>> second = sum_over_items(torch.tensor([6.0]), num_items_in_batch=3)
        >>> float(first + second)  # (1 + 2 + 6) / 3
        3.0
    """
    kept, _ = _masked(values, mask)
    total = kept.sum()
    if num_items_in_batch is None:
        return total
    return total / _global_count(num_items_in_batch, total)


Reduction = Callable[..., Tensor]  # (values, mask=None, num_items_in_batch=None) -> scalar

_BY_NAME: dict[str, Reduction] = {"mean": masked_mean, "sequence_mean": per_sequence_mean, "sum": sum_over_items}


def get_reduction(reduction: Union[str, Reduction]) -> Reduction:
    """The reduction named ``reduction`` (``"mean"``, ``"sequence_mean"``, ``"sum"``), or
    ``reduction`` itself when it is already one of this module's reductions.

    Example:
        >>> import torch
        >>> from divreg.reductions import masked_mean
        >>> get_reduction("mean") is masked_mean
        True
        >>> float(get_reduction("sum")(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, True, False])))
        3.0
    """
    if callable(reduction):
        if reduction not in _BY_NAME.values():
            raise ValueError(f"reduction must be one of divreg.reductions' masked_mean, per_sequence_mean, "
                             f"sum_over_items (or their names {sorted(_BY_NAME)}), got {reduction!r}")
        return reduction
    if reduction not in _BY_NAME:
        raise ValueError(f"reduction must be one of {sorted(_BY_NAME)} or a divreg.reductions function, "
                         f"got {reduction!r}")
    return _BY_NAME[reduction]


def position_weights(reduction: Union[str, Reduction], mask: Tensor, num_items_in_batch: Count = None) -> Tensor:
    r"""Per-position weights :math:`w` with ``reduction(values, mask, n) == (w * values).sum()``.

    Every reduction here is linear in the values, so its weights are its gradient with respect
    to them; they are computed by differentiating the reduction itself, so code that sums
    weighted values itself (the chunked :mod:`divreg.fused` kernel) reduces exactly as the
    reduction does, with no second definition. Masked positions get weight 0.

    Args:
        reduction: a reduction of this module or its name.
        mask: (...) bool, True where a position counts.
        num_items_in_batch: passed to the reduction.

    Returns:
        (...) float64 weights.

    Example:
        >>> import torch
        >>> mask = torch.tensor([[True, True, False], [True, False, False]])
        >>> position_weights("sequence_mean", mask).tolist()
        [[0.25, 0.25, 0.0], [0.5, 0.0, 0.0]]
    """
    function = get_reduction(reduction)
    probe = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device, requires_grad=True)
    with torch.enable_grad():
        total = function(probe, mask, num_items_in_batch) if num_items_in_batch is not None else function(probe, mask)
        (weights,) = torch.autograd.grad(total, probe, allow_unused=True)
    return torch.zeros_like(probe) if weights is None else weights


def reduce(values: Tensor, mask: Optional[Tensor] = None, reduction: str = "mean",
           num_items_in_batch: Count = None) -> Tensor:
    """Apply a named reduction: ``"mean"`` (token mean), ``"sequence_mean"``, ``"sum"``
    (divided by ``num_items_in_batch`` when given) or ``"none"`` (values with masked
    positions set to 0).

    Example:
        >>> import torch
        >>> values, mask = torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([True, True, False])
        >>> float(reduce(values, mask, "mean")), float(reduce(values, mask, "sum"))
        (1.5, 3.0)
        >>> reduce(values, mask, "none").tolist()  # the masked nan is never read
        [1.0, 2.0, 0.0]
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "mean" and num_items_in_batch is not None:
        _no_global_count("masked_mean", num_items_in_batch)
    if reduction == "none":
        if num_items_in_batch is not None:
            raise ValueError("num_items_in_batch only applies to reduction='sum', got reduction='none'")
        return _masked(values, mask)[0]
    return get_reduction(reduction)(values, mask, num_items_in_batch)
