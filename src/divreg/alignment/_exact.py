r"""Exact alignment analytics on distributions small enough to enumerate (float64): the
KL-regularized optimum (the tilted policy), best-of-N, the reward-versus-KL frontier of both, the
memoryless Bernoulli model in closed form, and InfAlign's calibrated space by quadrature.

References:
    Korbak, Perez, Buckley. "RL with KL penalties is better viewed as Bayesian inference", 2022,
    arXiv 2205.11275 (the tilted policy and the identity of :func:`regularized_objective`).
    Yang et al. "Asymptotics of Language Model Alignment", 2024, arXiv 2404.01730 (best-of-N vs the
    tilted policy; the memoryless Bernoulli model).
    Beirami et al. "Theoretical guarantees on the best-of-n alignment policy", 2024, arXiv
    2401.01879 (KL(BoN || base) <= log N - (N - 1)/N).
    Balashankar et al. "InfAlign: Inference-aware language model alignment", 2024, arXiv
    2412.19792 (calibrated rewards, transforms exp(t u) / -exp(-t u)).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from ..divergences import forward_kl


def _distribution(probs, name: str = "base") -> Tensor:
    # a Python list becomes float64 directly (torch.as_tensor would round it to float32 first)
    given = torch.as_tensor(probs) if isinstance(probs, (Tensor, np.ndarray)) else torch.tensor(probs, dtype=torch.float64)
    tolerance = 1e-6 if given.dtype == torch.float64 else 1e-3  # a float32 softmax over many outcomes rounds
    p = given.to(torch.float64)
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D probability vector, got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or abs(float(p.sum()) - 1.0) > tolerance:
        raise ValueError(f"{name} must be finite, >= 0 and sum to 1 (within {tolerance:g}), got sum {float(p.sum())!r}")
    return p / p.sum()  # float32 input rounds: renormalized in float64


def _rewards(rewards, like: Tensor) -> Tensor:
    r = (torch.as_tensor(rewards) if isinstance(rewards, (Tensor, np.ndarray)) else
         torch.tensor(rewards, dtype=torch.float64)).to(torch.float64)
    if r.shape != like.shape or not bool(torch.isfinite(r).all()):
        raise ValueError(f"rewards must be finite with the base's shape {tuple(like.shape)}, got {tuple(r.shape)}")
    return r


def _beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return float(beta)


def kl(p, q) -> float:
    r"""Exact :math:`KL(p\|q) = \sum_y p \log(p/q)` with :math:`0 \log 0 = 0` (inf where q = 0 < p).

    Example:
        >>> round(kl([1.0, 0.0], [0.5, 0.5]), 4)  # log 2
        0.6931
        >>> kl([0.25, 0.75], [0.25, 0.75])
        0.0
    """
    p, q = _distribution(p, "p"), _distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    return float(forward_kl(q.log(), p.log()))  # the zoo's KL(p || q) on log-probabilities, in float64


def log_partition(base, rewards, beta: float) -> float:
    r""":math:`\log Z = \log \sum_y \pi_0(y) e^{r(y)/\beta}` (log-sum-exp, stable for small beta).

    Example:
        >>> import math
        >>> # Z = 0.5 e^0 + 0.5 e^1
        >>> round(log_partition([0.5, 0.5], [0.0, 1.0], beta=1.0), 4), round(math.log((1 + math.e) / 2), 4)
        (0.6201, 0.6201)
    """
    p = _distribution(base)
    r, beta = _rewards(rewards, p), _beta(beta)
    support = p > 0
    top = float(r[support].max())
    return top / beta + float(torch.logsumexp(p[support].log() + (r[support] - top) / beta, 0))


def tilted_policy(base, rewards, beta: float) -> Tensor:
    r"""The maximizer of :math:`E_\pi[r] - \beta KL(\pi\|\pi_0)` over the simplex:
    :math:`\pi^*(y) = \pi_0(y) e^{r(y)/\beta} / Z` (Korbak et al. 2022).

    Example:
        >>> import math
        >>> # base uniform, e^(r/beta) = (1, 3): the tilted policy is (1, 3) / 4
        >>> [round(v, 4) for v in tilted_policy([0.5, 0.5], [0.0, math.log(3)], beta=1.0).tolist()]
        [0.25, 0.75]
    """
    p = _distribution(base)
    r, beta = _rewards(rewards, p), _beta(beta)
    logits = torch.where(p > 0, p.clamp(min=1e-300).log() + (r - r.max()) / beta, -math.inf)
    return torch.softmax(logits, 0)


def regularized_objective(policy, base, rewards, beta: float) -> float:
    r""":math:`E_\pi[r] - \beta KL(\pi\|\pi_0)`; for any :math:`\pi` it equals
    :math:`-\beta KL(\pi\|\pi^*) + \beta \log Z` (the identity of Korbak et al.).

    Example:
        >>> import math
        >>> from divreg.alignment import log_partition, tilted_policy
        >>> base, rewards = [0.5, 0.5], [0.0, math.log(3)]
        >>> best = tilted_policy(base, rewards, 1.0)  # KL(best || pi*) = 0: the objective is beta log Z = log 2
        >>> round(regularized_objective(best, base, rewards, 1.0), 4), round(log_partition(base, rewards, 1.0), 4)
        (0.6931, 0.6931)
        >>> round(regularized_objective(base, base, rewards, 1.0), 4)  # any other policy scores less: log(3) / 2
        0.5493
    """
    pi, p = _distribution(policy, "policy"), _distribution(base)
    r = _rewards(rewards, p)
    return float((pi * r).sum()) - _beta(beta) * kl(pi, p)


def _bisect(f: Callable[[float], float], target: float, low: float, high: float, decreasing: bool,
            tolerance: float = 1e-12, iterations: int = 400) -> float:
    """The x in [low, high] (log-scale search) where the monotone f(x) = target."""
    lo, hi = math.log(low), math.log(high)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        value = f(math.exp(mid))
        if (value > target) == decreasing:
            lo = mid
        else:
            hi = mid
        if hi - lo < tolerance:
            break
    return math.exp(0.5 * (lo + hi))


def beta_for_kl(base, rewards, target_kl: float) -> float:
    r"""The beta whose tilted policy has :math:`KL(\pi^*_\beta\|\pi_0)` = ``target_kl``
    (bisection; the KL decreases in beta). The target must lie in (0, KL of the best-reward
    policy) = (0, -log pi0(best set)).

    Example:
        >>> from divreg.alignment import kl, tilted_policy
        >>> base, rewards = [0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 2.0, 3.0]
        >>> beta = beta_for_kl(base, rewards, 0.1)
        >>> round(kl(tilted_policy(base, rewards, beta), base), 6)
        0.1
    """
    p = _distribution(base)
    r = _rewards(rewards, p)
    best = r[p > 0].max()
    ceiling = -math.log(float(p[(r == best) & (p > 0)].sum()))
    if not 0 < target_kl < ceiling:
        raise ValueError(f"target_kl must be in (0, {ceiling:.6g}) (the KL of the base restricted to its best rewards), "
                         f"got {target_kl!r}")
    gaps = torch.diff(torch.unique(r[p > 0]))  # the smallest reward gap sets the smallest useful beta
    spread = float(r[p > 0].max() - r[p > 0].min())
    beta = _bisect(lambda b: kl(tilted_policy(p, r, b), p), target_kl, float(gaps.min()) * 1e-6, spread * 1e8,
                   decreasing=True)
    return _checked(beta, kl(tilted_policy(p, r, beta), p), target_kl, "KL")


def beta_for_reward(base, rewards, target_reward: float) -> float:
    r"""The beta whose tilted policy has :math:`E_{\pi^*_\beta}[r]` = ``target_reward`` (the
    expected reward decreases in beta), between the base's expected reward and the best reward.

    Example:
        >>> from divreg.alignment import tilted_policy
        >>> base, rewards = [0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 2.0, 3.0]
        >>> beta = beta_for_reward(base, rewards, 2.0)  # the base's expected reward is 1.5
        >>> policy = tilted_policy(base, rewards, beta)
        >>> round(sum(p * r for p, r in zip(policy.tolist(), rewards)), 6)
        2.0
    """
    p = _distribution(base)
    r = _rewards(rewards, p)
    low, high = float((p * r).sum()), float(r[p > 0].max())
    if not low < target_reward < high:
        raise ValueError(f"target_reward must be in ({low:.6g}, {high:.6g}) (the base's expected reward, the best "
                         f"reward), got {target_reward!r}")
    spread = high - float(r[p > 0].min())
    gaps = torch.diff(torch.unique(r[p > 0]))
    beta = _bisect(lambda b: float((tilted_policy(p, r, b) * r).sum()), target_reward, float(gaps.min()) * 1e-6,
                   spread * 1e8, decreasing=True)
    return _checked(beta, float((tilted_policy(p, r, beta) * r).sum()), target_reward, "expected reward")


def _checked(beta: float, reached: float, target: float, what: str) -> float:
    """``beta`` if it reaches ``target`` (relative 1e-7), else a clear error (never a wrong beta)."""
    if abs(reached - target) > 1e-7 * max(1.0, abs(target)):
        raise ValueError(f"no beta reaches {what} {target!r} to 1e-7 in float64 (the closest gives {reached!r}); the "
                         "target is too close to its limit")
    return beta


def best_of_n(base, rewards, n: int) -> Tensor:
    r"""The exact distribution of the best of ``n`` i.i.d. samples of :math:`\pi_0` by reward. For
    distinct rewards :math:`\pi_{BoN}(y) = F(y)^n - F^-(y)^n` with :math:`F(y) = P(r \le r(y))`,
    :math:`F^-(y) = P(r < r(y))`; a level of tied rewards gets :math:`F^n - F^{-n}` in all, split
    in proportion to :math:`\pi_0` (a tie broken uniformly among the tied samples).

    Example:
        >>> # uniform base on rewards 0, 1, 2, best of 2: P(max = y) = F(y)^2 - F(y - 1)^2 = 1/9, 3/9, 5/9
        >>> [round(v, 4) for v in best_of_n([1/3, 1/3, 1/3], [0.0, 1.0, 2.0], n=2).tolist()]
        [0.1111, 0.3333, 0.5556]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    p = _distribution(base)
    r = _rewards(rewards, p)
    levels, index = torch.unique(r, return_inverse=True)  # sorted ascending
    mass = torch.zeros(levels.numel(), dtype=torch.float64).index_add_(0, index, p)
    # log F and log F^- (F = P(r <= level), F^- = P(r < level)) from the lower tails where F < 1/2 and from the
    # upper tails (1 - P(r > level)) above, so that neither loses digits; then F^n - F^-n = F^n (1 - exp(n (log F^-
    # - log F))) without cancellation, for any n
    upper_cdf = mass.cumsum(0)
    lower_cdf = torch.cat([mass.new_zeros(1), upper_cdf[:-1]])
    at_least = mass.flip(0).cumsum(0).flip(0).clamp(max=1.0)
    above = torch.cat([at_least[1:], at_least.new_zeros(1)])  # P(r > level): the next level's tail, exactly
    log_upper = torch.where(upper_cdf < 0.5, upper_cdf.log(), torch.log1p(-above))
    log_lower = torch.where(lower_cdf < 0.5, lower_cdf.log(), torch.log1p(-at_least))  # -inf at the bottom
    difference = torch.where(mass > 0, log_lower - log_upper, 0.0)  # a level without mass gets nothing
    power = float(n)  # n may exceed int64 (best-of-e^50)
    level_mass = torch.where(mass > 0, torch.exp(power * log_upper) * -torch.expm1(power * difference), 0.0)
    share = torch.where(mass[index] > 0, p / mass[index].clamp(min=1e-300), 0.0)
    return level_mass[index] * share


def best_of_n_kl_bound(n: int) -> float:
    """:math:`\\log N - (N - 1)/N`, the KL of best-of-N to the base when all rewards are distinct
    and the base has no atoms (an upper bound otherwise; Beirami et al. 2024).

    Example:
        >>> import math
        >>> from divreg.alignment import best_of_n, kl
        >>> best_of_n_kl_bound(1), round(best_of_n_kl_bound(2), 4), round(math.log(2) - 1 / 2, 4)
        (0.0, 0.1931, 0.1931)
        >>> base = [0.25, 0.25, 0.25, 0.25]  # a base with atoms stays below the bound
        >>> kl(best_of_n(base, [0.0, 1.0, 2.0, 3.0], 4), base) <= best_of_n_kl_bound(4)
        True
    """
    return math.log(n) - (n - 1) / n


def win_rate(policy, base, rewards, ties: float = 0.5) -> float:
    r""":math:`P(r(Y) > r(Y_0)) + \text{ties}\cdot P(r(Y) = r(Y_0))`, Y ~ policy, Y_0 ~ base,
    independent (ties count one half by default).

    Example:
        >>> # the policy always takes the better outcome; the base ties it half the time (a tie counts 1/2)
        >>> win_rate([0.0, 1.0], [0.5, 0.5], [0.0, 1.0])
        0.75
        >>> win_rate([0.5, 0.5], [0.5, 0.5], [0.0, 1.0])  # the base against itself
        0.5
    """
    pi, p = _distribution(policy, "policy"), _distribution(base)
    r = _rewards(rewards, p)
    greater = (r[:, None] > r[None, :]).double()
    equal = (r[:, None] == r[None, :]).double()
    return float(pi @ (greater + ties * equal) @ p)


class Frontier(NamedTuple):
    """Expected reward against KL(pi || base) along the tilted family (one point per beta) and
    along best-of-N (one per N), and at each N the tilted policy's reward at the same KL."""

    betas: list
    tilted_kl: list
    tilted_reward: list
    ns: list
    best_of_n_kl: list
    best_of_n_reward: list
    tilted_reward_at_best_of_n_kl: list  # the gap to best-of-N at equal KL is this minus best_of_n_reward


def alignment_frontier(base, rewards, betas: Sequence[float], ns: Sequence[int]) -> Frontier:
    """The exact reward-KL frontier of the tilted policies (one per beta) and of best-of-N (one per
    N), and at each N the tilted policy's expected reward at best-of-N's KL (see :class:`Frontier`).

    Example:
        >>> f = alignment_frontier([0.5, 0.5], [0.0, 1.0], betas=[1.0], ns=[1, 2])
        >>> f.best_of_n_reward  # the best of two fair coins is 1 with probability 3/4
        [0.5, 0.75]
        >>> # on two outcomes best-of-N is itself a tilted policy: equal reward at equal KL
        >>> [round(v, 4) for v in f.tilted_reward_at_best_of_n_kl]
        [0.5, 0.75]
    """
    p = _distribution(base)
    r = _rewards(rewards, p)
    tilted = [tilted_policy(p, r, b) for b in betas]
    bon = [best_of_n(p, r, n) for n in ns]
    bon_kl = [kl(q, p) for q in bon]
    matched = []
    best = r[p > 0].max()
    ceiling = -math.log(float(p[(r == best) & (p > 0)].sum()))
    for value in bon_kl:
        if value <= 1e-12:
            matched.append(float((p * r).sum()))
        elif value >= ceiling * (1 - 1e-9):  # best-of-N has reached the best rewards: so has the tilted limit
            matched.append(float(best))
        else:
            matched.append(float((tilted_policy(p, r, beta_for_kl(p, r, value)) * r).sum()))
    return Frontier(list(betas), [kl(q, p) for q in tilted], [float((q * r).sum()) for q in tilted], list(ns),
                    bon_kl, [float((q * r).sum()) for q in bon], matched)


def _bernoulli_kl(q: float, p: float) -> float:
    terms = 0.0
    if q > 0:
        terms += q * math.log(q / p)
    if q < 1:
        terms += (1 - q) * math.log((1 - q) / (1 - p))
    return terms


class BernoulliGap(NamedTuple):
    """Best-of-N against the tilted policy at equal KL on n Bernoulli tokens (the exact per-token gap)."""

    n: int  # sequence length
    N: int  # best-of-N
    kl: float  # KL(BoN || base) of the sequences, = that of the tilted policy matched to it
    best_of_n_reward: float  # E[#ones] under best-of-N
    tilted_reward: float  # E[#ones] under the tilted policy with the same KL
    gap_per_token: float  # (tilted - best-of-N) / n


def bernoulli_tilted_parameter(p: float, beta: float) -> float:
    r"""The per-token parameter of the tilted policy of n i.i.d. Bernoulli(p) tokens with reward
    = the number of ones: again i.i.d., :math:`q = p e^{1/\beta} / (1 - p + p e^{1/\beta})`.

    Example:
        >>> import math
        >>> # p = 1/2 and e^(1/beta) = 3: q = 3 / (1 + 3)
        >>> round(bernoulli_tilted_parameter(0.5, beta=1 / math.log(3)), 4)
        0.75
    """
    _beta(beta)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    return 1.0 / (1.0 + (1 - p) / p * math.exp(-1.0 / beta))


def bernoulli_count_pmf(n: int, p: float) -> Tensor:
    """The Binomial(n, p) probabilities of 0..n ones, in log space (exact for n in the thousands).

    Example:
        >>> [round(v, 4) for v in bernoulli_count_pmf(2, 0.5).tolist()]  # 0, 1, 2 heads in two fair tosses
        [0.25, 0.5, 0.25]
    """
    k = torch.arange(n + 1, dtype=torch.float64)
    log_pmf = (torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
               + k * math.log(p) + (n - k) * math.log1p(-p))
    return torch.softmax(log_pmf, 0)


def bernoulli_best_of_n_gap(n: int, N: int, p: float = 0.5) -> BernoulliGap:
    """Best-of-N over whole sequences of n Bernoulli(p) tokens (exact, from the Binomial: within a
    count, every sequence has the same base probability, so the KL is that of the counts) against
    the tilted policy of the same KL (its per-token q found by bisection).

    Example:
        >>> gap = bernoulli_best_of_n_gap(1, 2)  # one token: best-of-2 is itself a tilted policy
        >>> gap.best_of_n_reward, gap.tilted_reward, gap.gap_per_token
        (0.75, 0.75, 0.0)
        >>> bernoulli_best_of_n_gap(8, 4).gap_per_token > 0  # over 8 tokens the tilted policy gets more at equal KL
        True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    counts = torch.arange(n + 1, dtype=torch.float64)
    pmf = bernoulli_count_pmf(n, p)
    bon = best_of_n(pmf, counts, N)
    value = kl(bon, pmf)
    bon_reward = float((bon * counts).sum())
    if value <= 0:
        return BernoulliGap(n, N, 0.0, bon_reward, n * p, (n * p - bon_reward) / n)
    per_token = value / n
    if per_token >= -math.log(p) * (1 - 1e-9):  # best-of-N puts (nearly) everything on all ones: the tilted limit
        return BernoulliGap(n, N, value, bon_reward, float(n), (n - bon_reward) / n)
    lo, hi = p, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _bernoulli_kl(mid, p) < per_token:
            lo = mid
        else:
            hi = mid
    q = 0.5 * (lo + hi)
    return BernoulliGap(n, N, value, bon_reward, n * q, (n * q - bon_reward) / n)


# ---- InfAlign's calibrated space: the base is uniform on u in [0, 1] ----

def calibrate(base, rewards) -> Tensor:
    r"""The calibrated reward :math:`C(y) = P_{y' \sim \pi_0}(r(y') < r(y)) + \frac12
    P_{y' \sim \pi_0}(r(y') = r(y))` (mid-rank: for a continuous reward, C is uniform under
    :math:`\pi_0`).

    Example:
        >>> # uniform base: the share of rewards below, plus half the share tied
        >>> [round(v, 4) for v in calibrate([0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 1.0, 2.0]).tolist()]
        [0.125, 0.5, 0.5, 0.875]
    """
    p = _distribution(base)
    r = _rewards(rewards, p)
    below = ((r[None, :] < r[:, None]).double() * p[None, :]).sum(1)
    tied = ((r[None, :] == r[:, None]).double() * p[None, :]).sum(1)
    return below + 0.5 * tied


def calibrated_transform(kind: str, t: float = 1.0) -> Callable[[Tensor], Tensor]:
    """Phi(u): ``identity`` (u), ``best_of_n`` (exp(t u)) or ``worst_of_n`` (-exp(-t u)).

    Example:
        >>> import torch
        >>> u = torch.tensor([0.0, 1.0])
        >>> [round(v, 4) for v in calibrated_transform("best_of_n", t=2.0)(u).tolist()]  # exp(2 u)
        [1.0, 7.3891]
        >>> [round(v, 4) for v in calibrated_transform("worst_of_n", t=2.0)(u).tolist()]  # -exp(-2 u)
        [-1.0, -0.1353]
    """
    if kind == "identity":
        return lambda u: u
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t!r}")
    if kind == "best_of_n":
        return lambda u: torch.exp(t * u)
    if kind == "worst_of_n":
        return lambda u: -torch.exp(-t * u)
    raise ValueError(f"kind must be 'identity', 'best_of_n' or 'worst_of_n', got {kind!r}")


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(400)
_U = torch.tensor((_NODES + 1) / 2, dtype=torch.float64)  # Gauss-Legendre on [0, 1]
_W = torch.tensor(_WEIGHTS / 2, dtype=torch.float64)


class CalibratedPolicy(NamedTuple):
    """The aligned policy in calibrated space at one beta: its KL to the base and its best-of-N win rate."""

    beta: float
    kl: float  # KL(pi || uniform) = int pi log pi
    win_rate: float  # P(best of N under pi > best of N under the base)
    expected_u: float


def calibrated_policy(phi: Callable[[Tensor], Tensor], beta: float, n: int = 1) -> CalibratedPolicy:
    r"""The aligned policy in calibrated space, density :math:`\pi(u) \propto e^{\Phi(u)/\beta}` on
    [0, 1] (the base is uniform), by 400-point Gauss-Legendre quadrature: its KL to the base
    :math:`\int \pi \log \pi`, and its best-of-``n`` win rate against the base's best-of-``n``,
    :math:`\int_0^1 n\,G(u)^{n-1}\pi(u)\,u^n\,du` with :math:`G` the policy's CDF.

    Example:
        >>> import math
        >>> from divreg.alignment import calibrated_transform
        >>> # Phi(u) = u, beta = 1: pi(u) = e^u / (e - 1); at n = 1 the win rate is E[u] = 1 / (e - 1)
        >>> policy = calibrated_policy(calibrated_transform("identity"), beta=1.0)
        >>> round(policy.win_rate, 6), round(1 / (math.e - 1), 6)
        (0.581977, 0.581977)
    """
    beta = _beta(beta)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    log_unnormalized, log_z, density, kl_value = _calibrated_density(phi, beta)
    win = _win_rate(phi, beta, n, log_z, 0.0, 1.0)
    cdf = torch.stack([_integral(phi, beta, float(u), log_z) for u in _U])
    # a density too peaked for the rule: the same rule on each half of [0, 1] disagrees with it on the whole
    # (or the CDF at the last node plus the mass after it does not make 1)
    halves = float(_integral(phi, beta, 0.5, log_z)) + float(_segment(phi, beta, 0.5, 1.0, log_z))
    tail = float(cdf[-1]) + float(_segment(phi, beta, float(_U[-1]), 1.0, log_z))
    split = _win_rate(phi, beta, n, log_z, 0.0, 0.5) + _win_rate(phi, beta, n, log_z, 0.5, 1.0)
    if abs(halves - 1.0) > 1e-9 or abs(tail - 1.0) > 1e-8 or abs(split - win) > 1e-8:
        raise ValueError(f"beta={beta:.3g} makes the density too peaked for the 400-point quadrature (its CDF does not "
                         "reach 1); use a larger beta (a smaller KL)")
    return CalibratedPolicy(beta, kl_value, win, float((_W * density * _U).sum()))


def _calibrated_density(phi, beta: float):
    log_unnormalized = phi(_U) / beta
    log_z = torch.logsumexp(log_unnormalized + _W.log(), 0)
    density = torch.exp(log_unnormalized - log_z)
    return log_unnormalized, log_z, density, float((_W * density * (log_unnormalized - log_z)).sum())


def _win_rate(phi, beta: float, n: int, log_z: Tensor, lower: float, upper: float) -> float:
    r""":math:`\int n G^{n-1} \pi u^n du` over [lower, upper] by the rule scaled to it (G by the rule on [0, u])."""
    nodes = lower + _U * (upper - lower)
    density = torch.exp(phi(nodes) / beta - log_z)
    cdf = torch.stack([_integral(phi, beta, float(u), log_z) for u in nodes]).clamp(0, 1)
    return float(((upper - lower) * _W * n * cdf ** (n - 1) * density * nodes ** n).sum())


def _segment(phi, beta: float, lower: float, upper: float, log_z: Tensor) -> Tensor:
    nodes = lower + _U * (upper - lower)
    return ((upper - lower) * _W * torch.exp(phi(nodes) / beta - log_z)).sum()


def _integral(phi, beta: float, upper: float, log_z: Tensor) -> Tensor:
    nodes = _U * upper
    return (upper * _W * torch.exp(phi(nodes) / beta - log_z)).sum()


def calibrated_beta_for_kl(phi: Callable[[Tensor], Tensor], target_kl: float) -> float:
    """The beta at which the calibrated-space policy of ``phi`` has KL ``target_kl`` to the base.

    Example:
        >>> from divreg.alignment import calibrated_policy, calibrated_transform
        >>> phi = calibrated_transform("best_of_n", t=2.0)
        >>> beta = calibrated_beta_for_kl(phi, 0.1)
        >>> round(calibrated_policy(phi, beta).kl, 6)
        0.1
    """
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl!r}")
    ends = phi(torch.tensor([0.0, 1.0], dtype=torch.float64))
    spread = float((ends[1] - ends[0]).abs())  # beta is searched relative to Phi's range (exp(64 u) spans e^64)
    if not spread > 0:
        raise ValueError("Phi is constant on [0, 1]: no beta moves the policy")
    beta = _bisect(lambda b: _calibrated_density(phi, b)[3], target_kl, spread * 1e-12, spread * 1e6, decreasing=True,
                   tolerance=1e-10, iterations=200)
    reached = _calibrated_density(phi, beta)[3]
    if abs(reached - target_kl) > 1e-6 * max(1.0, target_kl):
        raise ValueError(f"KL {target_kl} is out of reach for this Phi by quadrature (got {reached:.6g}); use a smaller "
                         "KL or a smaller t")
    return beta


def best_transform_parameter(kind: str, n: int, target_kl: float, ts: Sequence[float]) -> tuple[float, float]:
    """The t of ``ts`` whose transform (``best_of_n``: exp(t u), ``worst_of_n``: -exp(-t u)) gives the
    highest best-of-``n`` win rate at KL ``target_kl`` to the base, and that win rate (a t whose
    policy cannot reach the KL by quadrature is skipped).

    Example:
        >>> # at n = 1 the win rate is E[u], which a linear Phi maximizes at a given KL;
        >>> # exp(t u) is closest to linear for the smallest t
        >>> t, rate = best_transform_parameter("best_of_n", 1, 0.1, ts=[0.5, 4.0, 16.0])
        >>> t, round(rate, 4)
        (0.5, 0.6276)
    """
    results = []
    for t in ts:
        phi = calibrated_transform(kind, t)
        try:
            beta = calibrated_beta_for_kl(phi, target_kl)
        except ValueError:
            continue
        results.append((calibrated_policy(phi, beta, n).win_rate, t))
    if not results:
        raise ValueError(f"no t of {list(ts)} reaches KL {target_kl} for kind={kind!r}")
    rate, t = max(results)
    return t, rate
