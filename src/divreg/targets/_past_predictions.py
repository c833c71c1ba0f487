"""The model's own predictions from the previous epoch, one row per training example."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PastPredictions(nn.Module):
    """A per-example memory of class probabilities, keyed by dataset index.

    Starts as the one-hot labels; :meth:`update` overwrites rows with the latest predictions, so
    that during epoch t :meth:`lookup` returns what the model predicted for each example during
    epoch t - 1 (the target of PS-KD). The memory is a buffer: it is saved with the state dict,
    so a resumed run sees exactly the same targets.

    Args:
        labels: (N,) integer labels of the training set, in dataset-index order.
        num_classes: C.

    References:
        Kim, Ji, Yoon, Hwang. "Self-Knowledge Distillation with Progressive Refinement of
        Targets" (PS-KD), ICCV 2021, arXiv 2006.12000.
    """

    def __init__(self, labels: Tensor, num_classes: int):
        super().__init__()
        if labels.dim() != 1 or torch.is_floating_point(labels):
            raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
        if labels.numel() and not bool(((labels >= 0) & (labels < num_classes)).all()):
            raise ValueError(f"labels must lie in [0, {num_classes})")
        self.register_buffer("memory", nn.functional.one_hot(labels.long(), num_classes).float())  # (N, C)

    def lookup(self, indices: Tensor) -> Tensor:
        """(B, C) stored probabilities of the examples ``indices`` (B,)."""
        return self.memory[indices]

    @torch.no_grad()
    def update(self, indices: Tensor, probs: Tensor) -> None:
        """Store ``probs`` (B, C) for the examples ``indices`` (B,) (detached)."""
        if probs.shape != (indices.shape[0], self.memory.shape[1]):
            raise ValueError(f"probs must have shape ({indices.shape[0]}, {self.memory.shape[1]}), got {tuple(probs.shape)}")
        self.memory[indices] = probs.detach().to(self.memory.dtype)
