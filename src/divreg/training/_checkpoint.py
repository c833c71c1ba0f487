"""Atomic, verified checkpoint files.

A checkpoint is written to a temporary file, flushed to disk, then renamed into place; the one it
replaces is kept beside it as ``<name>.prev``. So a run killed at any moment leaves a complete
checkpoint: the new one, or the previous one. Every checkpoint carries a sha256 of its contents
(every tensor's dtype, shape and bytes, and every other value), verified when it is loaded: a
truncated, empty or bit-flipped file is detected, and the previous checkpoint is used instead
(with one line saying so), or, when there is none, the run refuses with one line. A Ctrl-C
(SIGINT) that arrives while a checkpoint is written is held until the file is in place, then
raised: the interrupted run stops with its newest checkpoint complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import signal
import sys
import threading
from typing import Any, Optional

import numpy as np
import torch

from ._faults import fault_point

CHECKSUM_KEY = "divreg_sha256"  # the checkpoint's own entry: the digest of every other entry
PREVIOUS = ".prev"  # suffix of the checkpoint the newest one replaced


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be loaded or whose contents differ from its checksum."""


def _update(digest, value: Any) -> None:
    """Feed ``value`` into ``digest``: tensors and arrays by dtype, shape and bytes; dicts (by
    sorted keys), lists and tuples element by element; anything else by its pickle."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)};".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype}{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key in sorted(value, key=repr):
            _update(digest, key)
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)};".encode())
        for item in value:
            _update(digest, item)
    else:
        digest.update(b"P" + pickle.dumps(value, protocol=4))


def contents_sha256(state: Any) -> str:
    """The sha256 of a checkpoint's contents (see :func:`_update`), the same for equal contents
    whatever file they were read from."""
    digest = hashlib.sha256()
    _update(digest, state)
    return digest.hexdigest()


def save_atomic(state: Any, path: str) -> None:
    """``torch.save(state, path)`` that never leaves a partial file at ``path`` (nor a temporary
    one beside it when the write fails). A dict ``state`` gets its checksum entry
    (:data:`CHECKSUM_KEY`); the file it replaces is kept as ``path + ".prev"``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    if isinstance(state, dict):
        state = {**{k: v for k, v in state.items() if k != CHECKSUM_KEY}}
        state[CHECKSUM_KEY] = contents_sha256(state)
    fault_point("checkpoint.start")
    with _interrupt_held():
        try:
            with open(temporary, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            fault_point("checkpoint.written")
            if os.path.exists(path):  # a kill between these two renames leaves the previous one to resume from
                os.replace(path, path + PREVIOUS)
                fault_point("checkpoint.previous")
            os.replace(temporary, path)
            fault_point("checkpoint.renamed")
        except BaseException as error:
            if os.path.exists(temporary):
                os.remove(temporary)
            cause = _os_error(error)  # torch.save turns a failed write into a RuntimeError as its zip closes
            if cause is not None:  # named by the checkpoint, not the temporary file
                raise type(cause)(cause.errno, cause.strerror or str(cause), path) from None
            raise
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # make the rename itself durable
        finally:
            os.close(descriptor)


def _os_error(error: BaseException) -> Optional[OSError]:
    """The OSError behind ``error`` (itself, or one it was raised while handling), or None."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


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


def load_verified(path: str) -> Any:
    """The checkpoint at ``path`` (on CPU), its checksum verified; :class:`CorruptCheckpoint`
    (one line: what is wrong) when it cannot be read or its contents differ from the checksum.
    A checkpoint written before checksums existed is returned unverified."""
    if os.path.getsize(path) == 0:
        raise CorruptCheckpoint(f"checkpoint {path!r} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # zip, pickle and torch errors of every kind: a truncated or damaged file
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
        raise CorruptCheckpoint(f"checkpoint {path!r} cannot be read, it is truncated or damaged "
                                f"({type(error).__name__}: {reason})") from None
    if isinstance(state, dict) and CHECKSUM_KEY in state:
        recorded = state.pop(CHECKSUM_KEY)
        if contents_sha256(state) != recorded:
            raise CorruptCheckpoint(f"checkpoint {path!r} is damaged: its contents differ from the checksum it was "
                                    "written with")
    return state


def load_if_exists(path: str) -> Optional[Any]:
    """The newest good checkpoint of ``path`` (on CPU), verified (:func:`load_verified`), or None
    when there is none. A damaged or missing newest file falls back to the one it replaced
    (``path + ".prev"``), with one line on stderr saying so; when no good one is left, a
    ``ValueError`` says what was found and how to start again."""
    problems = []
    for candidate in (path, path + PREVIOUS):
        if not os.path.exists(candidate):
            continue
        try:
            state = load_verified(candidate)
        except CorruptCheckpoint as error:
            problems.append(str(error))
            continue
        if candidate != path and int(os.environ.get("RANK", "0")) == 0:
            why = problems[0] if problems else f"checkpoint {path!r} is missing (the run stopped while writing it)"
            print(f"divreg: {why}; resuming from the previous checkpoint {candidate!r}", file=sys.stderr, flush=True)
        return state
    if problems:
        raise ValueError(f"{problems[0]}, and no earlier good checkpoint is left; start the run again with "
                         "overwrite=true (or remove that file)")
    return None


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
    if isinstance(state, dict) and CHECKSUM_KEY in state:
        recorded = state.pop(CHECKSUM_KEY)
        if contents_sha256(state) != recorded:
            raise ValueError(f"{what} {path!r} is damaged: its contents differ from the checksum it was written with")
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
            if name.endswith((".pt", ".pt" + PREVIOUS)) or ".pt.tmp-" in name:
                os.remove(os.path.join(directory, name))
