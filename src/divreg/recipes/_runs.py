"""What every recipe does with its output folder and its data order: one place for the
run folder (checkpoints, JSONL log, resolved config), the per-epoch batch order, and the log."""

from __future__ import annotations

import json
import os

import torch
from accelerate import Accelerator
from torch import Tensor

from ..config import to_yaml
from ._checkpoint import remove_run_checkpoints


def prepare_run_folder(accelerator: Accelerator, output_dir: str, resume: bool, config) -> tuple[str, str]:
    """Create ``output_dir/checkpoints``, write ``config.yaml``, and unless ``resume`` forget
    the previous runs' checkpoints and ``metrics.jsonl``. Returns (checkpoint folder, log path)."""
    checkpoints = os.path.join(output_dir, "checkpoints")
    log_path = os.path.join(output_dir, "metrics.jsonl")
    if accelerator.is_main_process:
        os.makedirs(checkpoints, exist_ok=True)
        if not resume:
            remove_run_checkpoints(checkpoints)
            if os.path.exists(log_path):
                os.remove(log_path)
        with open(os.path.join(output_dir, "config.yaml"), "w") as handle:
            handle.write(to_yaml(config))
    accelerator.wait_for_everyone()
    return checkpoints, log_path


def append_record(accelerator: Accelerator, log_path: str, record: dict) -> None:
    """One JSON line in the run's log, written by the main process."""
    if accelerator.is_main_process:
        with open(log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """(num_batches, batch_size) dataset indices of one epoch: a permutation seeded by (seed,
    epoch), the last incomplete batch dropped."""
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the {num_examples} training examples")
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    num_batches = num_examples // batch_size
    return order[: num_batches * batch_size].view(num_batches, batch_size)
