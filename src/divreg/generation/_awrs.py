r"""Adaptive weighted rejection sampling (AWRS) of one token under a constraint (Lipkin et al.,
"Fast Controlled Generation from Language Models with Adaptive Weighted Rejection Sampling", 2025,
arXiv 2504.05410; official code genlm/genlm-control, ``genlm/control/sampler/token.py``).

Tokens are tested in the order of Gumbel keys :math:`\log \bar p(x) - \log(-\log U)` (sampling
without replacement from :math:`\bar p = p / Z_p`); the first token the constraint c accepts is an
exact sample of :math:`p c / Z`, :math:`Z = \sum_x p(x) c(x)`. With it comes an unbiased estimate
:math:`\hat w` of Z, :math:`E[\hat w\, 1\{X = x\}] = p(x) c(x)`:

- ``"recursive"`` (genlm-control L479-556): with rho the rejected mass so far,
  :math:`q_i = \bar p(x_i)/(1 - \rho)`, each rejection multiplies by :math:`1 - q_i`; after the
  accepted :math:`x_i`, one more token in key order is tested: the factor is 1 if it is accepted
  (or none is left), else :math:`q_i`. :math:`\hat w = Z_p \prod_{rejected}(1 - q_j) F`.
- ``"two_pass"`` (the paper's, AC ``experiments/sampler.py`` L85-114): a second pass with fresh
  keys over the tokens the first pass did not reject, until any acceptance;
  :math:`\hat w = Z_p (1 - \sum_{r \in R_1} \bar p(r)) / (|R_1| + |R_2| + 1)`.

A dead end (nothing allowed) returns no token and weight 0. Work in progress for issue 18: SMC,
the constraint adapters and the baselines are not built yet.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

ESTIMATORS = ("recursive", "two_pass")


class AWRSSample(NamedTuple):
    token: Optional[int]  # None: a dead end
    log_weight: float  # log of the estimate of Z (-inf at a dead end)
    constraint_calls: int


def gumbel_order(log_probs: Tensor, generator: Optional[torch.Generator] = None) -> list[int]:
    """Token ids in decreasing order of log p + Gumbel noise, tokens of probability 0 left out."""
    uniform = torch.rand(log_probs.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    keys = log_probs.double() - torch.log(-torch.log(uniform))
    order = torch.argsort(keys, descending=True).tolist()
    return [t for t in order if log_probs[t] > -math.inf]


def awrs(log_probs: Tensor, allowed: Callable[[int], bool], *, estimator: str = "recursive",
         generator: Optional[torch.Generator] = None) -> AWRSSample:
    """One AWRS draw from the (V,) unnormalized log-probabilities ``log_probs`` under ``allowed``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if log_probs.dim() != 1 or bool(torch.isnan(log_probs).any()):
        raise ValueError("log_probs must be a (V,) tensor without NaN")
    log_z = float(torch.logsumexp(log_probs.double(), 0))
    if log_z == -math.inf:
        raise ValueError("log_probs gives every token probability 0")
    p = (log_probs.double() - log_z).exp()  # p-bar
    order, calls, cache = gumbel_order(log_probs, generator), 0, {}

    def test(token: int) -> bool:
        nonlocal calls
        if token not in cache:
            calls += 1
            cache[token] = bool(allowed(token))
        return cache[token]

    rejected, log_factor, rho = [], 0.0, 0.0
    for position, token in enumerate(order):
        q = float(p[token]) / max(1e-300, 1 - rho)
        if test(token):
            if estimator == "recursive":
                following = order[position + 1:]
                factor = 1.0 if not following or test(following[0]) else q
                return AWRSSample(token, log_z + log_factor + math.log(factor), calls)
            second = [t for t in gumbel_order(log_probs, generator) if t not in set(rejected)]
            extra = 0
            for other in second:
                if test(other):
                    break
                extra += 1
            weight = (1 - sum(float(p[r]) for r in rejected)) / (len(rejected) + extra + 1)
            return AWRSSample(token, log_z + math.log(max(weight, 1e-300)), calls)
        rejected.append(token)
        log_factor += math.log(max(1e-300, 1 - q))
        rho += float(p[token])
    return AWRSSample(None, -math.inf, calls)
