r"""Difficulty from observed correctness: item response theory (IRT), as Easy2Hard-Bench labels its
problems (Ding et al., "Easy2Hard-Bench: Standardized Difficulty Labels for Profiling LLM
Performance and Generalization", NeurIPS 2024 Datasets and Benchmarks, arXiv 2409.18433; data
``furonghuang-lab/Easy2Hard-Bench``; its IRT fits use ``py-irt``), and difficulty-ordered sampling
(an easy-to-hard curriculum).

The model: solver i (a model, a checkpoint, an attempt round) answers item j correctly with
probability

.. math::
    P(y_{ij} = 1) = \sigma\big(a_j(\theta_i - b_j)\big),

:math:`a_j = 1` for the Rasch (1PL) model, :math:`a_j = e^{\alpha_j}` for 2PL. Fitted by maximum a
posteriori with Gaussian priors :math:`\theta \sim N(0, 1)` (which also fixes the scale),
:math:`b \sim N(0, \sigma_b^2)`, :math:`\alpha \sim N(0, \sigma_\alpha^2)`, over the observed
entries only (``mask``), with L-BFGS in float64. Departures: py-irt (and Easy2Hard-Bench) fit the
same likelihood by stochastic variational inference (Adam, lr 0.1, vague priors
:math:`b \sim N(0, 10^3)` for 1PL); MAP is the deterministic point estimate of that posterior's
mode, with ``difficulty_std`` (default 3) as the prior's width. Glicko-2 (the paper's labels for
chess and Codeforces) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

IRT_MODELS = ("rasch", "2pl")
CURRICULA = ("uniform", "easy_to_hard", "hard_to_easy")


@dataclass
class IRTFit:
    """A fitted IRT model: ``ability`` (S,) per solver, ``difficulty`` (I,) per item,
    ``discrimination`` (I,) per item (ones for Rasch) and the negative log-posterior reached."""

    ability: np.ndarray
    difficulty: np.ndarray
    discrimination: np.ndarray
    objective: float

    def probability(self) -> np.ndarray:
        """(S, I) the fitted probability of each solver answering each item correctly."""
        logits = self.discrimination[None] * (self.ability[:, None] - self.difficulty[None])
        return 1.0 / (1.0 + np.exp(-logits))


def irt_objective(correct: torch.Tensor, mask: torch.Tensor, ability: torch.Tensor, difficulty: torch.Tensor,
                  log_discrimination: Optional[torch.Tensor], difficulty_std: float,
                  discrimination_std: float) -> torch.Tensor:
    """The negative log-posterior (up to a constant) that :func:`fit_irt` minimizes."""
    scale = 1.0 if log_discrimination is None else log_discrimination.exp()[None]
    logits = scale * (ability[:, None] - difficulty[None])
    likelihood = torch.nn.functional.binary_cross_entropy_with_logits(logits, correct, reduction="none")
    value = (likelihood * mask).sum() + 0.5 * ability.pow(2).sum() + 0.5 * (difficulty / difficulty_std).pow(2).sum()
    if log_discrimination is not None:
        value = value + 0.5 * (log_discrimination / discrimination_std).pow(2).sum()
    return value


def fit_irt(correct, mask=None, *, model: str = "rasch", difficulty_std: float = 3.0,
            discrimination_std: float = 0.5, max_iter: int = 500) -> IRTFit:
    """MAP fit of a Rasch or 2PL model to an (S solvers, I items) matrix of 0/1 outcomes.

    Args:
        correct: (S, I) 1 where solver i answered item j correctly, 0 where not (any value where
            ``mask`` is 0).
        mask: (S, I) 1 where the outcome was observed; None: all observed.
        model: ``"rasch"`` (1PL) or ``"2pl"``.
        difficulty_std, discrimination_std: the priors' widths (of b and of log a).
        max_iter: L-BFGS iterations.
    """
    if model not in IRT_MODELS:
        raise ValueError(f"model must be one of {IRT_MODELS}, got {model!r}")
    y = torch.as_tensor(np.asarray(correct, dtype=np.float64))
    m = torch.ones_like(y) if mask is None else torch.as_tensor(np.asarray(mask, dtype=np.float64))
    if y.ndim != 2 or m.shape != y.shape or not y.numel():
        raise ValueError(f"correct must be a non-empty (solvers, items) matrix and mask the same shape; got "
                         f"{tuple(y.shape)} and {tuple(m.shape)}")
    if not torch.isin(m, torch.tensor([0.0, 1.0], dtype=m.dtype)).all():
        raise ValueError("mask must hold 0/1 values")
    observed = m.bool()
    if not torch.isin(y[observed], torch.tensor([0.0, 1.0], dtype=y.dtype)).all():
        raise ValueError("correct must hold 0/1 values where observed")
    if not (difficulty_std > 0 and discrimination_std > 0):
        raise ValueError("difficulty_std and discrimination_std must be > 0")
    y = torch.where(observed, y, 0.0)
    solvers, items = y.shape
    ability = torch.zeros(solvers, dtype=torch.float64, requires_grad=True)
    difficulty = torch.zeros(items, dtype=torch.float64, requires_grad=True)
    log_a = torch.zeros(items, dtype=torch.float64, requires_grad=True) if model == "2pl" else None
    parameters = [ability, difficulty] + ([log_a] if log_a is not None else [])
    optimizer = torch.optim.LBFGS(parameters, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = irt_objective(y, m, ability, difficulty, log_a, difficulty_std, discrimination_std)
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        value = float(irt_objective(y, m, ability, difficulty, log_a, difficulty_std, discrimination_std))
    discrimination = np.ones(items) if log_a is None else log_a.detach().exp().numpy()
    return IRTFit(ability.detach().numpy(), difficulty.detach().numpy(), discrimination, value)


def curriculum_weights(difficulty, progress: float, kind: str = "easy_to_hard", sharpness: float = 4.0) -> np.ndarray:
    r"""(I,) sampling probabilities over items at training ``progress`` in [0, 1].

    ``easy_to_hard``: :math:`w_j \propto \exp(-\kappa\,(r_j - \text{progress})^2 \cdot 4)` where
    :math:`r_j \in [0, 1]` is item j's difficulty rank (0 easiest; tied items share their mean rank) and :math:`\kappa` the
    ``sharpness``: early steps favour easy items, the window slides to the hardest by the end;
    ``hard_to_easy`` mirrors it; ``uniform`` is flat. (Easy2Hard-Bench gives the labels, not a
    schedule; this window is ours, an option with a documented default.)
    """
    scores = np.asarray(difficulty, dtype=np.float64)
    if kind not in CURRICULA:
        raise ValueError(f"kind must be one of {CURRICULA}, got {kind!r}")
    if scores.ndim != 1 or not len(scores) or not np.isfinite(scores).all():
        raise ValueError("difficulty must be a finite, non-empty (I,) vector")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")
    if kind == "uniform":
        return np.full(len(scores), 1.0 / len(scores))
    from scipy.stats import rankdata

    rank = (rankdata(scores, method="average") - 1) / max(len(scores) - 1, 1)  # ties share their mean rank
    if kind == "hard_to_easy":
        rank = 1.0 - rank
    weights = np.exp(-4.0 * sharpness * (rank - progress) ** 2)
    return weights / weights.sum()
