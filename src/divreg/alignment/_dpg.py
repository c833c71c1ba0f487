r"""Distribution matching toward an unnormalized target (DPG / GDC): train a policy
:math:`\pi_\theta` toward :math:`p = P/Z`, e.g. :math:`P(y) = \pi_0(y) e^{r(y)/\beta}` (the tilted
policy, reached by minimizing :math:`KL(p\|\pi)` instead of :math:`KL(\pi\|p)`) or
:math:`P(y) = \pi_0(y)\,1[y \text{ satisfies a constraint}]`, from samples of a proposal q.

.. math::
    \nabla_\theta KL(p\|\pi_\theta) = -E_p[\nabla\log\pi_\theta]
    = -\frac{1}{Z} E_q\Big[\frac{P(y)}{q(y)} \nabla\log\pi_\theta(y)\Big],
    \qquad \hat Z = \frac1N\sum_i \frac{P(y_i)}{q(y_i)}

References:
    Parshakova, Andreoli, Dymetman. "Distributional Reinforcement Learning for Energy-Based
    Sequential Models", 2019, arXiv 1912.08517 (DPG).
    Khalifa, Elsahar, Dymetman. "A Distributional Approach to Controlled Text Generation", 2021,
    arXiv 2012.11635 (GDC: the KL-adaptive proposal, q replaced by pi when KL(p||pi) < KL(p||q)).
    Korbak, Perez, Buckley, 2022, arXiv 2205.11275 (the Bayesian view: the tilted policy as p).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor


def _check(*tensors: Tensor) -> None:
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1 or tensors[0].dim() != 1 or tensors[0].numel() == 0:
        raise ValueError(f"the log-values must be non-empty 1-D tensors of one shape, got {sorted(map(tuple, shapes))}")


def log_importance_ratios(log_target: Tensor, proposal_logprobs: Tensor) -> Tensor:
    r""":math:`\log (P(y_i)/q(y_i))` (-inf where the target is 0, e.g. a violated constraint).

    Example:
        >>> import torch
        >>> # P = (0.5, 0), q = (0.25, 0.5): ratios 2 and 0 (a sample the target rules out)
        >>> log_importance_ratios(torch.tensor([0.5, 0.0]).log(), torch.tensor([0.25, 0.5]).log()).exp().tolist()
        [2.0, 0.0]
    """
    _check(log_target, proposal_logprobs)
    return log_target - proposal_logprobs


def log_partition_estimate(log_target: Tensor, proposal_logprobs: Tensor) -> Tensor:
    r""":math:`\log \hat Z = \log \frac1N \sum_i P(y_i)/q(y_i)` (unbiased for Z, not for log Z).

    Example:
        >>> import math, torch
        >>> q = torch.tensor([0.2, 0.5, 0.3]).log()
        >>> # a target equal to 3 times the proposal: every ratio is Z = 3
        >>> round(float(log_partition_estimate(q + math.log(3), q)), 4), round(math.log(3), 4)
        (1.0986, 1.0986)
    """
    weights = log_importance_ratios(log_target, proposal_logprobs)
    return torch.logsumexp(weights, 0) - math.log(weights.numel())


def dpg_surrogate(policy_logprobs: Tensor, log_target: Tensor, proposal_logprobs: Tensor,
                  log_partition: Optional[Tensor] = None) -> Tensor:
    r"""Per-sample :math:`-\frac{P(y_i)}{Z\,q(y_i)} \log\pi_\theta(y_i)` (the weight detached):
    its mean's gradient, in expectation over :math:`y_i \sim q`, is :math:`\nabla KL(p\|\pi_\theta)`
    when ``log_partition`` is the true log Z; with None, :math:`\hat Z` of the same samples
    (self-normalized: consistent, slightly biased).

    Example:
        >>> import torch
        >>> # P / q = (2, 6), so Z_hat = 4 and the weights P / (Z_hat q) are (0.5, 1.5); here log pi = -1
        >>> target, proposal = torch.tensor([1.0, 3.0]).log(), torch.tensor([0.5, 0.5]).log()
        >>> dpg_surrogate(torch.tensor([-1.0, -1.0]), target, proposal).tolist()
        [0.5, 1.5]
    """
    _check(policy_logprobs, log_target, proposal_logprobs)
    log_z = log_partition_estimate(log_target, proposal_logprobs) if log_partition is None else log_partition
    if not bool(torch.isfinite(torch.as_tensor(log_z))):
        raise ValueError("no sample has target mass > 0 (every log_target is -inf, e.g. a constraint none satisfies): "
                         "there is nothing to match; draw more samples or use a proposal closer to the target")
    weights = torch.exp(log_importance_ratios(log_target, proposal_logprobs) - log_z).detach()
    return -weights * policy_logprobs


class KLEstimates(NamedTuple):
    """DPG's estimates from the proposal's samples: log Z and the KLs of the target to policy and proposal."""

    log_partition: float  # log Z_hat
    policy: float  # KL(p || pi) estimated from the proposal's samples
    proposal: float  # KL(p || q)


def dpg_kl_estimates(policy_logprobs: Tensor, log_target: Tensor, proposal_logprobs: Tensor) -> KLEstimates:
    r"""Importance-sampled :math:`KL(p\|\pi) \approx \frac1N\sum_i \frac{P_i}{\hat Z q_i}
    \log\frac{P_i}{\hat Z \pi_i}` and the same with q in place of :math:`\pi`, from samples of q
    (GDC's estimates; samples where P = 0 contribute 0).

    Example:
        >>> import torch
        >>> from divreg.alignment import kl
        >>> # q uniform on two outcomes, one sample of each; P = (1, 3), so p = (1/4, 3/4); the policy is p
        >>> policy, target, proposal = (torch.tensor(v).log() for v in ([0.25, 0.75], [1.0, 3.0], [0.5, 0.5]))
        >>> estimates = dpg_kl_estimates(policy, target, proposal)
        >>> round(estimates.policy, 4), round(estimates.proposal, 4), round(kl([0.25, 0.75], [0.5, 0.5]), 4)
        (0.0, 0.1308, 0.1308)
    """
    _check(policy_logprobs, log_target, proposal_logprobs)
    log_z = log_partition_estimate(log_target, proposal_logprobs)
    if not bool(torch.isfinite(log_z)):
        raise ValueError("no sample has target mass > 0: the KLs to the target cannot be estimated from these samples")
    weights = torch.exp(log_importance_ratios(log_target, proposal_logprobs) - log_z)
    keep = weights > 0
    n = weights.numel()

    def estimate(logprobs: Tensor) -> float:
        terms = weights[keep] * (log_target[keep] - log_z - logprobs[keep])
        return float(terms.sum() / n)

    return KLEstimates(float(log_z), estimate(policy_logprobs.detach()), estimate(proposal_logprobs))


def adaptive_proposal_update(estimates: KLEstimates) -> bool:
    """GDC's rule: replace the proposal q by the current policy when the policy is estimated to be
    closer to the target, KL(p || pi) < KL(p || q).

    Example:
        >>> from divreg.alignment import KLEstimates
        >>> adaptive_proposal_update(KLEstimates(log_partition=0.0, policy=0.1, proposal=0.3))  # pi is closer to p
        True
        >>> adaptive_proposal_update(KLEstimates(log_partition=0.0, policy=0.3, proposal=0.1))
        False
    """
    return estimates.policy < estimates.proposal
