"""Small helpers for a batch on several processes: moving it to the device, and global means of
per-process values (one all-reduce each)."""

from __future__ import annotations

from typing import Sequence

import torch
from accelerate import Accelerator
from torch import Tensor


def to_device(batch: dict, device) -> dict:
    """The batch with every tensor moved to ``device`` (other values as they are)."""
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}


def global_means(accelerator: Accelerator, stats: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Means over the global batch of masked values: ``{name: (values, mask)}``."""
    names = list(stats)
    local = torch.tensor([[float(torch.where(m, v, 0.0).sum()), float(m.sum())] for v, m in stats.values()],
                         dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, "sum")
    return {name: float(total[i, 0] / total[i, 1].clamp(min=1)) for i, name in enumerate(names)}


def global_mean(accelerator: Accelerator, values: Sequence[float]) -> float:
    """The mean of ``values`` of every process together (each process its own list)."""
    total = accelerator.reduce(torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64,
                                            device=accelerator.device), "sum")
    return float(total[0] / total[1])
