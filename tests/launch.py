"""Launching a command under ``accelerate launch`` with N CPU processes (gloo), on a free port
so that consecutive launches never collide."""

import socket
import sys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_prefix(processes: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def kill_at_checkpoint(process, checkpoint, ready, timeout: float = 120.0, group: bool = False) -> dict:
    """SIGKILL ``process`` as soon as ``checkpoint`` (a path) holds a checkpoint for which
    ``ready(checkpoint_dict)`` is true; returns that checkpoint. Fails if the process ended first.
    ``group``: kill its whole process group (a launcher started with ``start_new_session=True``
    and its workers, which would otherwise go on writing)."""
    import os
    import signal
    import time

    import torch

    deadline, state = time.time() + timeout, None
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            state = torch.load(checkpoint, weights_only=False)
            if ready(state):
                break
        time.sleep(0.005)
    if group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert state is not None and ready(state), "no checkpoint of the wanted kind was written before the kill"
    return state
