"""Atomic checkpoint files: written to a temporary file, flushed to disk, then renamed over the
old one, so a run killed at any moment leaves either the previous checkpoint or the new one.
A Ctrl-C (SIGINT) that arrives while a checkpoint is written is held until the file is in place,
then raised: the interrupted run stops with its newest checkpoint complete."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Optional

import torch


def save_atomic(state: Any, path: str) -> None:
    """``torch.save(state, path)`` that never leaves a partial file at ``path`` (nor a temporary
    one beside it when the write fails)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with _interrupt_held():
        try:
            with open(temporary, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # make the rename itself durable
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _interrupt_held():
    """Hold SIGINT for the block (main thread only: signals are delivered there), then deliver it
    to the handler that was in place (by default: ``KeyboardInterrupt``). A KeyboardInterrupt
    raised inside ``torch.save`` would leave its zip writer half-closed and surface as an
    unrelated RuntimeError. Scope: the process that receives the Ctrl-C (a single-process run);
    under ``accelerate launch`` the launcher answers it with SIGTERM to the workers, which is not
    held (the previous checkpoint stays intact; a temporary file may remain). If the block
    raises, that error propagates and a held SIGINT is dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, received[-1])
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def load_if_exists(path: str) -> Optional[Any]:
    """The checkpoint at ``path`` (on CPU), or None."""
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_model_state(model: torch.nn.Module, path: str, what: str, architecture: str = "the model's settings") -> None:
    """Load a state dict (a bare one, or a divreg checkpoint's ``"model"``) from ``path`` into
    ``model``, with one actionable ``ValueError`` for each way it can fail: no such file, not a
    PyTorch file, not a state dict, or a state dict of another architecture (naming the first
    keys that differ). ``what`` names the setting, e.g. ``"teacher_checkpoint"``, and
    ``architecture`` the settings that fix a mismatch, e.g. ``"teacher.kind and teacher.widths"``."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist; give the path of a saved state dict or divreg checkpoint "
                         "(e.g. <output_dir>/checkpoints/teacher.pt of an earlier run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors of every kind: the file is not a checkpoint
        raise ValueError(f"{what} {path!r} is not a PyTorch checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:120] if str(error) else ''})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} {path!r} holds no state dict (a dict of tensors, or a checkpoint with one under "
                         "'model')")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        found = "; ".join(part for part in (f"missing {missing[:3]}" if missing else "",
                                            f"unexpected {unexpected[:3]}" if unexpected else "",
                                            f"other shapes {shapes[:3]}" if shapes else "") if part)
        raise ValueError(f"{what} {path!r} holds another architecture than the configured model ({found}); "
                         f"set {architecture} to those it was trained with")
    model.load_state_dict(state)


def remove_run_checkpoints(directory: str) -> None:
    """Forget previous runs' checkpoints in ``directory`` (a fresh start without ``resume``)."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith(".pt") or ".pt.tmp-" in name:
                os.remove(os.path.join(directory, name))
