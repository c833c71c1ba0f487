"""What the benchmarks share: each measurement runs in a fresh worker process (its own peak memory,
no allocator state carried over), started as ``python <script> --worker '<json spec>'`` and
answering with one JSON line; and the current and peak resident memory of the current process."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Optional


def run_worker(script: str, spec: dict, *, env: Optional[dict] = None, skip_if: Optional[dict] = None) -> dict:
    """``script --worker spec`` in a fresh process; its last stdout line parsed as JSON.
    ``{"failed": "OOM"}`` when the kernel killed it (SIGKILL: the naive path can exceed this
    machine's memory); ``{"failed": reason}`` when its stderr contains a key of ``skip_if``
    (e.g. a missing optional package); any other failure raises with the worker's stderr."""
    result = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True,
                            env=env)
    if result.returncode == -9:
        return {"failed": "OOM"}
    if result.returncode != 0:
        for marker, reason in (skip_if or {}).items():
            if marker in result.stderr:
                return {"failed": reason}
        raise RuntimeError(f"worker failed for {spec}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_bytes() -> int:
    """The current resident set size of this process, in bytes (``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size to the current one (Linux: ``clear_refs`` 5), so
    that :func:`peak_rss_since_reset_bytes` sees only what follows (e.g. a measured call after a
    warm-up that compiled kernels). False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_bytes() -> int:
    """The peak resident set size since the last :func:`reset_peak_rss` (``VmHWM``), in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss_bytes()
