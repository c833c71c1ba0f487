"""Atomic checkpoint files: written to a temporary file, flushed to disk, then renamed over the
old one, so a run killed at any moment leaves either the previous checkpoint or the new one."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch


def save_atomic(state: Any, path: str) -> None:
    """``torch.save(state, path)`` that never leaves a partial file at ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # make the rename itself durable
    finally:
        os.close(descriptor)


def load_if_exists(path: str) -> Optional[Any]:
    """The checkpoint at ``path`` (on CPU), or None."""
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_run_checkpoints(directory: str) -> None:
    """Forget previous runs' checkpoints in ``directory`` (a fresh start without ``resume``)."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith(".pt") or ".pt.tmp-" in name:
                os.remove(os.path.join(directory, name))
