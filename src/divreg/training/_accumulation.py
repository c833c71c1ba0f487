"""Gradient accumulation with global normalization: every micro-batch loss is a sum over its
tokens divided by the number of valid tokens of the *global* batch (all micro-batches of all
processes), so the gradient does not depend on how the batch was split."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from ..data import IGNORE_INDEX

# loss_fn(model, micro_batch, num_items_in_batch) -> (loss, {name: detached part})
MicroBatchLoss = Callable[[nn.Module, dict, Tensor], tuple[Tensor, dict[str, Tensor]]]


def global_token_count(batches: Sequence[dict], accelerator: Accelerator, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Valid (shifted) label tokens over all micro-batches of all processes: the N that
    normalizes every micro-batch loss."""
    local = sum(int((b["labels"][:, 1:] != ignore_index).sum()) for b in batches)
    return accelerator.reduce(torch.tensor(float(local), device=accelerator.device), "sum")


def backward_micro_batches(accelerator: Accelerator, model: nn.Module, micro_batches: Sequence[dict],
                           loss_fn: MicroBatchLoss) -> dict[str, float]:
    """Backward through every micro-batch (gradients synchronized once, after the last), each
    loss normalized by :func:`global_token_count`; returns each reported part summed over the
    micro-batches and processes (so a part normalized like the loss is its global value).

    DDP averages gradients over the P processes, so each loss is multiplied by P: the result is
    the gradient of the global sum / N, as in one process.
    """
    num_items = global_token_count(micro_batches, accelerator)
    totals: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        context = accelerator.no_sync(model) if index < len(micro_batches) - 1 else nullcontext()
        with context:
            loss, parts = loss_fn(model, batch, num_items)
            accelerator.backward(loss * accelerator.num_processes)
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + float(accelerator.reduce(value.detach(), "sum"))
    return totals
