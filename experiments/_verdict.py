"""The one rule by which every experiment in this folder grades a claim, so that a verdict is a
computation, not a judgement made after seeing the numbers.

A claim "A is better than B" on a metric is graded from the two measured values and their
standard errors:

- ``held``: the difference is in the claimed direction and larger than ``z`` (default 2)
  standard errors of the difference;
- ``did not hold``: the difference is in the opposite direction by more than ``z`` standard errors;
- ``not shown``: the difference is within ``z`` standard errors (the setting cannot tell).

Standard errors: over seeds, ``std / sqrt(n)`` of each mean, where ``std`` is always the *sample*
standard deviation over the ``n`` seeds (``ddof=1``: :func:`sample_std` or ``statistics.stdev``,
never ``np.std``'s population default; as the recipes report it); for an accuracy measured on ``n`` problems, the binomial
``sqrt(p (1 - p) / n)``, floored at one problem in ``n`` so that 0 and 1 are not exact; with a
single run and no error estimate, the verdict is marked ``(1 run)``.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional

HELD, NOT_HELD, NOT_SHOWN = "held", "did not hold", "not shown"


def grade(better: float, worse: float, se_better: float, se_worse: float, *, higher_is_better: bool = True,
          z: float = 2.0) -> str:
    """The verdict on "``better`` beats ``worse``" (see the module docstring)."""
    difference = (better - worse) if higher_is_better else (worse - better)
    spread = z * math.hypot(se_better, se_worse)
    if difference > spread:
        return HELD
    if difference < -spread:
        return NOT_HELD
    return NOT_SHOWN


def seed_se(std: float, seeds: int) -> float:
    """Standard error of a mean over ``seeds`` runs with standard deviation ``std``."""
    return std / math.sqrt(seeds)


def proportion_se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` problems (floored at 1/n)."""
    q = min(max(p, 1.0 / n), 1.0 - 1.0 / n)
    return math.sqrt(q * (1.0 - q) / n)


def single_run(better: float, worse: float, *, higher_is_better: bool = True) -> str:
    """One run each, no error estimate: the direction only, marked as such."""
    ahead = better > worse if higher_is_better else better < worse
    return f"{HELD if ahead else NOT_HELD} (1 run)"


def grade_equal(difference: float, se: float, *, z: float = 2.0) -> str:
    """The verdict on a claim of *no* difference (an unbiased estimator): ``held`` when the
    measured difference is within ``z`` standard errors of 0, else ``did not hold``; ``not shown``
    without an error estimate (NaN: a single value)."""
    if not math.isfinite(se):
        return NOT_SHOWN
    return HELD if abs(difference) <= z * se else NOT_HELD


def sample_std(values) -> float:
    """The sample standard deviation (``ddof=1``) of ``values``: the one rule of this folder; NaN
    for a single value (no spread can be estimated from one run, and :func:`grade` then says
    ``not shown`` rather than treating one run as exact; use :func:`single_run`)."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_std(values) -> tuple[float, float]:
    """(mean, :func:`sample_std`) of ``values``."""
    values = [float(v) for v in values]
    return sum(values) / len(values), sample_std(values)


def mean_se(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of ``values`` over seeds (:func:`sample_std` / sqrt(n))."""
    mean, std = mean_std(values)
    return mean, seed_se(std, len(values))


def seed_summary(runs: list[dict]) -> dict:
    """``{key: (mean, sample std)}`` over seeds of per-seed ``{key: value}`` results."""
    return {key: mean_std([r[key] for r in runs]) for key in runs[0]}


def print_summary(summary: dict, columns: tuple[str, str]) -> None:
    """A two-column Markdown table of ``mean +- std`` per key."""
    print(f"| {columns[0]} | {columns[1]} |\n|---|---|")
    for name, (mean, std) in summary.items():
        print(f"| {name} | {mean:.3f} +- {std:.3f} |")


def grade_summary(summary: dict, better: str, worse: str, seeds: int, *, higher_is_better: bool = True) -> str:
    """:func:`grade` on two keys of a :func:`seed_summary` (standard errors over ``seeds``)."""
    (b, sb), (w, sw) = summary[better], summary[worse]
    return grade(b, w, seed_se(sb, seeds), seed_se(sw, seeds), higher_is_better=higher_is_better)


def experiment_parser(doc: str, *, seeds: Optional[int] = None, steps: Optional[int] = None,
                      from_run: bool = False, output_dir: Optional[str] = "outputs/experiments"
                      ) -> argparse.ArgumentParser:
    """The arguments every experiment shares: ``--output-dir`` (plots and tables), and as the
    script needs them ``--seeds``, ``--steps`` and ``--from-run DIR`` (grade a finished run's
    folder instead of running the job again)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--output-dir", default=output_dir, help="where the plot (and a job's run) goes")
    if seeds is not None:
        parser.add_argument("--seeds", type=int, default=seeds)
    if steps is not None:
        parser.add_argument("--steps", type=int, default=steps)
    if from_run:
        parser.add_argument("--from-run", metavar="DIR", help="grade this finished run's folder (metrics.json, "
                                                              "config.yaml) instead of running the job")
    return parser


def over_seeds(run: Callable[[int, int], dict], seeds: int, steps: int) -> tuple[dict, float]:
    """``(seed_summary of run(seed, steps) for each seed, seconds)`` on 2 threads."""
    import time

    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    summary = seed_summary([run(seed, steps) for seed in range(seeds)])
    return summary, time.perf_counter() - started


def print_rows(rows: list[dict]) -> None:
    """The verdicts as a Markdown table (claim, our figure, verdict)."""
    keys = ["claim", "our figure", "verdict"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join("---" for _ in keys) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in keys) + " |")


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, folder: str, name: str) -> None:
    """Lay out ``figure`` and write it to ``folder/name`` (the folder created if missing)."""
    figure.tight_layout()
    os.makedirs(folder, exist_ok=True)
    figure.savefig(os.path.join(folder, name), dpi=100)


def run_setting(metrics_path: str, key: str) -> int:
    """A setting of the finished run whose ``metrics.json`` is at ``metrics_path``, read from the
    ``config.yaml`` beside it (so that a saved run is graded with its own seeds and sizes)."""
    from omegaconf import OmegaConf

    config_path = os.path.join(os.path.dirname(os.path.abspath(metrics_path)), "config.yaml")
    if not os.path.exists(config_path):
        raise SystemExit(f"no config.yaml beside {metrics_path}: give the metrics.json of a divreg run folder")
    value = OmegaConf.to_container(OmegaConf.load(config_path))[key]
    return len(value) if isinstance(value, list) else int(value)
