"""Test-session set-up shared by tests/ and the doctests under src/.

Under pytest-xdist (``make test`` runs the suite on every core), each worker is a process of its
own; torch's default of one thread per core in every worker would oversubscribe the machine, so a
worker takes its share of the cores. A plain ``pytest`` run is unchanged."""

import os


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
