"""Gradient accumulation with global normalization: every micro-batch loss is a sum over its
tokens divided by the number of valid tokens of the *global* batch (all micro-batches of all
processes), so the gradient does not depend on how the batch was split."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, NamedTuple, Sequence

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from ..data import IGNORE_INDEX



class ItemCounts(NamedTuple):
    """What a global batch holds, over all micro-batches of all processes: the counts a
    micro-batch loss divides its sum by."""

    tokens: Tensor  # valid (shifted) label tokens: the N of token-level losses
    sequences: Tensor  # sequences with at least one valid label token: the count of per-sequence means


# loss_fn(model, micro_batch, counts) -> (loss, {name: detached part}); a micro-batch: a dict or a typed batch
MicroBatchLoss = Callable[[nn.Module, Any, ItemCounts], tuple[Tensor, dict[str, Tensor]]]


def global_item_counts(batches: Sequence[dict], accelerator: Accelerator,
                       ignore_index: int = IGNORE_INDEX) -> ItemCounts:
    """The :class:`ItemCounts` of the global batch (one all-reduce); a micro-batch is a dict with
    ``labels`` or an object with a ``labels`` field (a :class:`divreg.rl.Rollout`)."""
    valid = [(b["labels"] if isinstance(b, dict) else b.labels)[:, 1:] != ignore_index for b in batches]  # (B, T-1)
    local = [float(sum(int(v.sum()) for v in valid)), float(sum(int(v.any(1).sum()) for v in valid))]
    total = accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum")
    return ItemCounts(total[0], total[1])


def backward_micro_batches(accelerator: Accelerator, model: nn.Module, micro_batches: Sequence[dict],
                           loss_fn: MicroBatchLoss, counts: Any = None) -> dict[str, float]:
    """Backward through every micro-batch (gradients synchronized once, after the last), each
    loss given the :func:`global_item_counts` to normalize by; returns each reported part summed over the
    micro-batches and processes (so a part normalized like the loss is its global value).

    DDP averages gradients over the P processes, so each loss is multiplied by P: the result is
    the gradient of the global sum / N, as in one process.

    ``counts``: the global counts to pass instead (a recipe whose items are not the ``labels``
    tokens of each micro-batch, e.g. preference pairs, computes its own, globally).
    """
    num_items = global_item_counts(micro_batches, accelerator) if counts is None else counts
    totals: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        context = accelerator.no_sync(model) if index < len(micro_batches) - 1 else nullcontext()
        with context:
            loss, parts = loss_fn(model, batch, num_items)
            accelerator.backward(loss * accelerator.num_processes)
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + float(accelerator.reduce(value.detach(), "sum"))
    return totals
