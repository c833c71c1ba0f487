"""Fault injection for divreg's reliability tests: named points in the training loop, the
checkpoint writer and ``divreg select`` where a test can SIGKILL the process.

Off unless the environment asks (a dictionary lookup per point otherwise):

- ``DIVREG_FAULT_AT=N``: the process kills itself (SIGKILL, as an out-of-memory killer or a
  preempted machine would) at the N-th fault point it reaches, whatever its name;
- ``DIVREG_FAULT_LOG=FILE``: every point reached is appended to FILE (one name per line), so a
  harness can count the points of a whole run and spread its kills over them;
- ``DIVREG_FAULT_ONCE=NAME:FILE``: the first process (of any number, e.g. Ray's workers) to reach
  the point NAME creates FILE and kills itself; every later one goes on (a worker that dies once).

The points: ``step.start`` and ``step.end`` (each optimizer step), ``evaluation`` (after its
record is logged), ``checkpoint.start``, ``checkpoint.written`` (the temporary file complete),
``checkpoint.previous`` (the old checkpoint renamed to ``.prev``, the new one not yet in place),
``checkpoint.renamed`` (the new one in place); ``select.featurized``, ``select.written``
(the selection staged, not yet renamed to ``output_dir``), ``select.replaced`` (the earlier
selection removed, the new one not yet in place), ``select.ray_task`` (a Ray task starts).
"""

from __future__ import annotations

import os
import signal

_count = 0


def fault_point(name: str) -> None:
    """A place where a reliability test may kill this process (see the module docstring)."""
    global _count
    at, log, once = (os.environ.get(key) for key in ("DIVREG_FAULT_AT", "DIVREG_FAULT_LOG", "DIVREG_FAULT_ONCE"))
    if at is None and log is None and once is None:
        return
    if once is not None and once.split(":", 1)[0] == name:
        try:
            os.close(os.open(once.split(":", 1)[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    _count += 1
    if log is not None:
        with open(log, "a") as handle:
            handle.write(f"{name}\n")
    if at is not None and _count == int(at):
        os.kill(os.getpid(), signal.SIGKILL)
