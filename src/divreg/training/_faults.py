"""Fault injection for divreg's reliability tests: named points in the training loop, the
checkpoint writer and ``divreg select`` where a test can SIGKILL the process.

Off unless the environment asks (a dictionary lookup per point otherwise):

- ``DIVREG_FAULT_AT=N``: the process kills itself (SIGKILL, as an out-of-memory killer or a
  preempted machine would) at the N-th fault point it reaches, whatever its name;
- ``DIVREG_FAULT_LOG=FILE``: every point reached is appended to FILE (one name per line), so a
  harness can count the points of a whole run and spread its kills over them.

The points: ``step.start`` and ``step.end`` (each optimizer step), ``evaluation`` (after its
record is logged), ``checkpoint.start``, ``checkpoint.written`` (the temporary file complete),
``checkpoint.previous`` (the old checkpoint renamed to ``.prev``, the new one not yet in place),
``checkpoint.renamed`` (the new one in place); ``select.featurized``, ``select.written``
(the selection staged, not yet renamed to ``output_dir``).
"""

from __future__ import annotations

import os
import signal

_count = 0


def fault_point(name: str) -> None:
    """A place where a reliability test may kill this process (see the module docstring)."""
    global _count
    at, log = os.environ.get("DIVREG_FAULT_AT"), os.environ.get("DIVREG_FAULT_LOG")
    if at is None and log is None:
        return
    _count += 1
    if log is not None:
        with open(log, "a") as handle:
            handle.write(f"{name}\n")
    if at is not None and _count == int(at):
        os.kill(os.getpid(), signal.SIGKILL)
