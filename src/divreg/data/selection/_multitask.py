r"""Source-task allocation for multi-task representation learning: how many samples to draw from
each source task, from the target's estimated relevance to each (Wang, Chen, Jamieson and Du,
"Improved Active Multi-Task Representation Learning via Lasso", ICML 2023, arXiv 2306.02556; no
official code was found; the L2 rule it improves on: Chen, Jamieson and Du, "Active Multi-Task
Representation Learning", ICML 2022, arXiv 2202.00911).

The setting: source task m has :math:`y = x^\top B^* w_m + z`, the target
:math:`w_0 = W^* \nu` with :math:`W^* = [w_1 \dots w_M]`. A representation learned from
:math:`n_m` samples of each source has target excess risk driven by
:math:`\sigma^2 \sum_m \nu_m^2 / n_m`; under a total budget :math:`\sum_m n_m = N` this is
minimized by :math:`n_m \propto |\nu_m|` (value :math:`\sigma^2 \|\nu\|_1^2 / N`), which is why the
relevance to estimate is the *minimum-L1* solution :math:`\nu^1 = \arg\min \|\nu\|_1` s.t.
:math:`W\nu = w_0`, estimated from noisy heads by the Lasso

.. math::
    \hat\nu = \arg\min_\nu \tfrac{1}{2k}\,\|\hat W \nu - \hat w_0\|_2^2 + \alpha \|\nu\|_1

(scikit-learn's ``Lasso`` objective, no intercept; k = the representation's width, the number of
rows). The earlier rule uses the minimum-L2 solution :math:`\hat\nu^2 = \hat W^+ \hat w_0` and
:math:`n_m \propto \hat\nu_m^2`.

Departures (the paper's constants were not available to us): ``alpha`` (the paper scales its
Lasso weight with the heads' estimation error) is an argument with a default of 0.01 times the
largest useful value :math:`\|\hat W^\top \hat w_0\|_\infty / k` (above which the Lasso returns 0);
the paper's uniform floor per task is ``floor``; its multi-epoch doubling schedule is left to the
caller (call :func:`allocate_source_samples` once per round with that round's budget).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

RULES = ("lasso", "l2", "uniform")


def task_relevance(source_heads: np.ndarray, target_head: np.ndarray, rule: str = "lasso",
                   alpha: Optional[float] = None) -> np.ndarray:
    r"""(M,) the target's relevance :math:`\hat\nu` to each of M source tasks.

    Args:
        source_heads: (k, M) the source tasks' heads :math:`\hat W` on a shared representation.
        target_head: (k,) the target's head :math:`\hat w_0` on the same representation.
        rule: ``"lasso"`` (the paper's L1 estimate), ``"l2"`` (the minimum-norm least-squares
            :math:`\hat W^+ \hat w_0`, Chen et al. 2022) or ``"uniform"`` (all ones).
        alpha: the Lasso's weight (``rule="lasso"`` only); None: 0.01 of the value at which the
            solution becomes 0.
    """
    heads = np.asarray(source_heads, dtype=np.float64)
    target = np.asarray(target_head, dtype=np.float64)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if heads.ndim != 2 or target.shape != (heads.shape[0],):
        raise ValueError(f"source_heads must be (k, M) and target_head (k,); got {heads.shape} and {target.shape}")
    if not (np.isfinite(heads).all() and np.isfinite(target).all()):
        raise ValueError("source_heads and target_head must be finite")
    k, tasks = heads.shape
    if rule == "uniform":
        return np.ones(tasks)
    if rule == "l2":
        return np.linalg.pinv(heads) @ target
    from sklearn.linear_model import Lasso

    largest = float(np.abs(heads.T @ target).max()) / k
    if alpha is None:
        alpha = 0.01 * largest
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if largest == 0.0:  # a zero target: no task is relevant
        return np.zeros(tasks)
    return Lasso(alpha=alpha, fit_intercept=False, max_iter=100_000, tol=1e-10).fit(heads, target).coef_


def allocate_source_samples(relevance: np.ndarray, budget: int, rule: str = "lasso", floor: int = 0) -> np.ndarray:
    r"""(M,) int samples to draw from each source task, summing to ``budget``.

    :math:`n_m = \text{floor} + (N - M\,\text{floor})\, r_m / \sum_j r_j` rounded by largest
    remainders, with :math:`r_m = |\nu_m|` for ``"lasso"`` (the L1 rule), :math:`\nu_m^2` for
    ``"l2"``, 1 for ``"uniform"``; all-zero relevance falls back to uniform.
    """
    nu = np.asarray(relevance, dtype=np.float64)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if nu.ndim != 1 or not len(nu) or not np.isfinite(nu).all():
        raise ValueError(f"relevance must be a finite (M,) vector, got shape {nu.shape}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, np.integer)) or floor < 0 or floor * len(nu) > budget:
        raise ValueError(f"floor must be an integer in [0, budget / M] = [0, {budget // len(nu)}], got {floor!r}")
    score = {"lasso": np.abs(nu), "l2": nu ** 2, "uniform": np.ones_like(nu)}[rule]
    if score.sum() == 0:
        score = np.ones_like(nu)
    share = (budget - floor * len(nu)) * score / score.sum()
    counts = np.floor(share).astype(np.int64)
    left = int(budget - floor * len(nu) - counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:left]] += 1  # largest remainders
    return counts + floor
