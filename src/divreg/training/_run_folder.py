"""The output folder of a run: checkpoints, the JSONL log of evaluations, the resolved config."""

from __future__ import annotations

import json
import os

from accelerate import Accelerator

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
