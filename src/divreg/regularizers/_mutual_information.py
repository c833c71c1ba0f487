r"""Intermediate-representation distillation as mutual-information maximization (Distiller: He et
al., "Distiller: A Systematic Study of Model Distillation Methods in Natural Language
Processing", 2021, arXiv 2109.11105), with the interpolated bound of Poole et al., "On Variational
Bounds of Mutual Information", ICML 2019, arXiv 1905.06922 (reference code:
google-research/vbmi, ``interpolated_lower_bound``).

Scores :math:`S_{ij} = f(x_j, y_i)` of a separable critic :math:`g_t(y_i)^\top g_s(x_j)` over a
batch of K pairs (y the teacher's representation, x the student's), a baseline :math:`b(y)`, and
:math:`\alpha = \sigma(a)`:

.. math::
    m_{ij} = \log\frac{1}{K-1}\sum_{k\ne j} e^{S_{ik}},\qquad
    B_{ij} = \log\big(\alpha e^{m_{ij}} + (1-\alpha) e^{b(y_i)}\big),

    I_\alpha = 1 + \frac{1}{K(K-1)}\sum_{i\ne j}(S_{ii} - B_{ij})
               - \frac{1}{K(K-1)}\sum_{i\ne j} e^{S_{ij} - B_{ii}},

a lower bound on I(x; y) for every critic and baseline: alpha = 0 is TUBA/NWJ with baseline b,
alpha = 1 an NCE-like bound; the loss is :math:`-I_\alpha`. Everything in log space
(:math:`m` by a log-sum-exp minus one term, via :math:`\log(1 - e^{-d})`). The issue names a
critic of dimension 32 and alpha in {0.1, 0.5, 0.9}; alpha is learnable here (``learn_alpha``),
fixed in the Distiller-style port we saw. Baselines it unifies: the MSE and cosine losses on
hidden states through a learned projection (:class:`ProjectedHiddenLoss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def loo_log_mean_exp(scores: Tensor) -> Tensor:
    """(K, K) :math:`m_{ij} = \\log \\frac{1}{K-1} \\sum_{k \\ne j} e^{S_{ik}}`, stably.

    Example:
        >>> import torch
        >>> scores = torch.log(torch.tensor([[1.0, 2.0, 3.0]] * 3))  # row 0: log 5/2, log 4/2, log 3/2
        >>> [round(v, 4) for v in loo_log_mean_exp(scores)[0].tolist()]
        [0.9163, 0.6931, 0.4055]
    """
    k = scores.shape[1]
    if scores.dim() != 2 or k < 2:
        raise ValueError(f"scores must be (K, K) with K >= 2, got {tuple(scores.shape)}")
    gap = (torch.logsumexp(scores, dim=1, keepdim=True) - scores).clamp_min(1e-12)  # log-sum-exp minus one term
    return scores + gap + torch.log(-torch.expm1(-gap)) - math.log(k - 1)


def interpolated_mi_bound(scores: Tensor, log_baseline: Tensor, alpha_logit: Tensor) -> Tensor:
    """Poole et al.'s :math:`I_\\alpha` (a scalar) from scores (K, K) (rows: y, columns: x; the
    diagonal the positive pairs), log baselines b(y_i) (K,) and the logit a of alpha.

    Example:
        >>> import math, torch
        >>> blind = interpolated_mi_bound(torch.zeros(3, 3), torch.zeros(3), torch.tensor(0.0))  # constant scores
        >>> abs(float(blind)) < 1e-6
        True
        >>> s = 2.0  # K = 2, alpha = 1/2, b = 0: the bound is s - log((e^s + 1) / 2)
        >>> bound = interpolated_mi_bound(torch.tensor([[s, 0.0], [0.0, s]]), torch.zeros(2), torch.tensor(0.0))
        >>> round(float(bound), 4), round(s - math.log((math.exp(s) + 1) / 2), 4)
        (0.5662, 0.5662)
    """
    k = scores.shape[0]
    if scores.shape != (k, k) or log_baseline.shape != (k,):
        raise ValueError(f"scores must be (K, K) and log_baseline (K,), got {tuple(scores.shape)}, "
                         f"{tuple(log_baseline.shape)}")
    alpha_logit = torch.as_tensor(alpha_logit, dtype=scores.dtype, device=scores.device)
    baseline = torch.logaddexp(-F.softplus(-alpha_logit) + loo_log_mean_exp(scores),
                               -F.softplus(alpha_logit) + log_baseline[:, None])  # (K, K)
    off = ~torch.eye(k, dtype=torch.bool, device=scores.device)
    joint = (scores.diagonal()[:, None] - baseline)[off].mean()
    marginal = torch.exp(torch.logsumexp((scores - baseline.diagonal()[:, None])[off], dim=0) - math.log(k * (k - 1)))
    return 1 + joint - marginal


class MIAlphaDistill(torch.nn.Module):
    """-I_alpha between student and teacher representations: separable critic (two linear maps
    to ``critic_dim``), a linear baseline b(teacher), alpha = sigmoid(a) (learnable or fixed)."""

    def __init__(self, student_dim: int, teacher_dim: int, *, critic_dim: int = 32, alpha: float = 0.5,
                 learn_alpha: bool = True):
        super().__init__()
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.student_map = torch.nn.Linear(student_dim, critic_dim)
        self.teacher_map = torch.nn.Linear(teacher_dim, critic_dim)
        self.baseline = torch.nn.Linear(teacher_dim, 1)
        logit = torch.tensor(math.log(alpha / (1 - alpha)))
        self.alpha_logit = torch.nn.Parameter(logit) if learn_alpha else torch.nn.Buffer(logit)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        scores = self.teacher_map(teacher) @ self.student_map(student).T  # (K, K): rows teacher, columns student
        return -interpolated_mi_bound(scores, self.baseline(teacher).squeeze(-1), self.alpha_logit)


class ProjectedHiddenLoss(torch.nn.Module):
    """The plain hidden-state losses MI-alpha unifies: mean squared error (``"mse"``) or 1 - cosine
    (``"cosine"``) between a learned linear projection of the student's states and the teacher's."""

    def __init__(self, student_dim: int, teacher_dim: int, kind: str = "mse"):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"kind must be 'mse' or 'cosine', got {kind!r}")
        self.projection, self.kind = torch.nn.Linear(student_dim, teacher_dim), kind

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        projected = self.projection(student)
        if self.kind == "mse":
            return F.mse_loss(projected, teacher)
        return (1 - F.cosine_similarity(projected, teacher, dim=-1)).mean()
