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
- ``"geometric"`` (genlm-control ``geometric_awrs``, L559-638): simulates sampling *with*
  replacement from the without-replacement run. Before each newly tested token, a
  Geometric(1 - rho) - 1 number of "phantom" rejections (draws of already rejected tokens) is added
  to the count R; after an acceptance, the keys are drawn again (rejected tokens stay removed, the
  accepted one stays in); this repeats until ``max_accepts`` acceptances a (or ``max_rejects``).
  :math:`\hat\theta = \min(k - 1, a) / (a + R - 1)`, k = ``max_accepts``: the Rao-Blackwellized
  "was the first with-replacement draw accepted" (for k = 2 and no cap, R is negative binomial
  (2, theta) and :math:`E[1/(R + 1)] = \theta`). :math:`\hat w = Z_p \hat\theta`.

genlm-control picks ``geometric`` when ``max_accepts > 2`` or :math:`\max \bar p \ge 2/3`, else
``recursive``; here the caller chooses (``estimator="auto"`` applies that rule). A finite
``max_rejects`` (geometric only; genlm's cap) bounds the work at the price of a bias; the default
(no cap) is unbiased.

A dead end (nothing allowed) returns no token and weight 0 (log weight -inf).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor

ESTIMATORS = ("recursive", "two_pass", "geometric", "auto")
GEOMETRIC_THRESHOLD = 2 / 3  # genlm-control: geometric when the top probability is at least this


class AWRSSample(NamedTuple):
    """One AWRS draw: the accepted token (None at a dead end), its log weight and the constraint calls it took."""

    token: Optional[int]  # None: a dead end
    log_weight: float  # log of the estimate of Z (-inf at a dead end)
    constraint_calls: int


def gumbel_order(log_probs: Tensor, generator: Optional[torch.Generator] = None) -> list[int]:
    """Token ids in decreasing order of log p + Gumbel noise, tokens of probability 0 left out
    (keys on normalized log-probabilities: a huge offset would otherwise swamp the noise).

    Example:
        >>> import math, torch
        >>> order = gumbel_order(torch.tensor([0.0, -math.inf, 0.0, 0.0]), torch.Generator().manual_seed(0))
        >>> sorted(order)  # a random order of the tokens of probability > 0: token 1 is left out
        [0, 2, 3]
    """
    log_z = torch.logsumexp(log_probs.double(), 0)
    return list(_key_order(log_probs.double() - log_z if log_z > -math.inf else log_probs, generator))


def _key_order(log_probs: Tensor, generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """``gumbel_order``, lazily: the keys are drawn once, then sorted in growing top-k blocks
    (32, 128, ...), so that a draw accepted early costs O(V) rather than a full O(V log V) sort."""
    uniform = torch.rand(log_probs.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    keys = log_probs.double() - torch.log(-torch.log(uniform))
    finite = int((log_probs > -math.inf).sum())
    done, block = 0, 32
    while done < finite:
        block = min(finite, block)
        yield from torch.topk(keys, block).indices[done:].tolist()
        done, block = block, block * 4


def awrs(log_probs: Tensor, allowed: Callable[[int], bool], *, estimator: str = "recursive",
         generator: Optional[torch.Generator] = None, max_accepts: int = 2,
         max_rejects: Optional[int] = None) -> AWRSSample:
    """One AWRS draw from the (V,) unnormalized log-probabilities ``log_probs`` under ``allowed``.

    ``allowed(token) -> bool`` is the constraint on the next token (called at most once per token;
    ``constraint_calls`` counts the calls). ``max_accepts`` and ``max_rejects`` are the geometric
    estimator's (defaults: genlm-control's 2, and no cap: unbiased).

    Example:
        >>> import math, torch
        >>> log_p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
        >>> draw = awrs(log_p, lambda token: token != 0, generator=torch.Generator().manual_seed(0))
        >>> draw.token in (1, 2), math.isfinite(draw.log_weight)  # an allowed token; E[exp(log_weight)] = Z = 0.5
        (True, True)
        >>> round(math.exp(awrs(log_p, lambda token: True).log_weight), 4)  # all allowed: the weight is Z = 1
        1.0
        >>> awrs(log_p, lambda token: False)  # a dead end
        AWRSSample(token=None, log_weight=-inf, constraint_calls=3)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not isinstance(log_probs, Tensor) or log_probs.dim() != 1:
        raise ValueError(f"log_probs must be a (V,) torch tensor, got {type(log_probs).__name__} "
                         f"{tuple(getattr(log_probs, 'shape', ()))}")
    if bool(torch.isnan(log_probs).any()) or bool((log_probs == math.inf).any()):
        raise ValueError("log_probs has NaN or +inf: give finite log-probabilities (-inf for impossible tokens)")
    if max_accepts < 2:
        raise ValueError(f"max_accepts must be at least 2 (the estimator divides by a + R - 1), got {max_accepts}")
    if max_rejects is not None and max_rejects < 1:
        raise ValueError(f"max_rejects must be a positive number of rejections or None, got {max_rejects}")
    log_z = float(torch.logsumexp(log_probs.double(), 0))
    if log_z == -math.inf:
        raise ValueError("log_probs gives every token probability 0")
    log_p = log_probs.double() - log_z  # log p-bar: keys drawn on it (no ties from a huge offset)
    if estimator == "auto":
        estimator = "geometric" if max_accepts > 2 or float(log_p.max()) >= math.log(GEOMETRIC_THRESHOLD) \
            else "recursive"
    if (max_accepts != 2 or max_rejects is not None) and estimator != "geometric":
        raise ValueError(f"max_accepts and max_rejects are the geometric estimator's; {estimator!r} has none")
    calls, cache = 0, {}

    def test(token: int) -> bool:
        nonlocal calls
        if token not in cache:
            calls += 1
            cache[token] = bool(allowed(token))
        return cache[token]

    masses = _Masses(log_p)
    if estimator == "geometric":
        return _geometric(log_p, masses, test, generator, max_accepts, max_rejects, log_z, lambda: calls)
    order = _key_order(log_p, generator)
    for token in order:
        log_remaining = masses.log_remaining()
        if test(token):
            if estimator == "recursive":
                # prod over rejections of (1 - q_j) telescopes to the remaining mass
                following = next(order, None)
                log_f = 0.0 if following is None or test(following) else float(log_p[token]) - log_remaining
                return AWRSSample(token, log_z + log_remaining + log_f, calls)
            extra = 0
            for other in _key_order(log_p, generator):
                if not masses.alive[other]:
                    continue
                if test(other):
                    break
                extra += 1
            log_w = log_remaining - math.log(len(masses.rejected) + extra + 1)
            return AWRSSample(token, log_z + log_w, calls)
        masses.reject(token)
    return AWRSSample(None, -math.inf, calls)


def _log1m_exp(log_x: float) -> float:
    """log(1 - e^log_x), accurate for x near 0 and near 1."""
    if log_x >= 0:
        return -math.inf
    return math.log1p(-math.exp(log_x)) if log_x < -math.log(2) else math.log(-math.expm1(log_x))


class _Masses:
    """The rejected and the remaining mass of p-bar, each from a direct sum (never 1 - rho, which
    loses every digit when the allowed mass is below the rounding of 1)."""

    def __init__(self, log_p: Tensor):
        self.log_p, self.rejected, self.log_rejected = log_p, [], -math.inf
        self._alive: Optional[Tensor] = None

    @property
    def alive(self) -> Tensor:
        if self._alive is None:
            self._alive = torch.ones_like(self.log_p, dtype=torch.bool)
            self._alive[self.rejected] = False
        return self._alive

    def reject(self, token: int) -> None:
        self.rejected.append(token)
        if self._alive is not None:
            self._alive[token] = False
        self.log_rejected = _log_add(self.log_rejected, float(self.log_p[token]))

    def log_remaining(self) -> float:
        if self.log_rejected < -math.log(2):  # the rejected mass is below 1/2: 1 - rho is exact enough
            return _log1m_exp(self.log_rejected)
        return float(torch.logsumexp(self.log_p[self.alive], 0))

    def log_rejected_fraction(self) -> float:
        """log rho, or log(1 - remaining) when the remaining mass is small (accurate both ways)."""
        if self.log_rejected < -math.log(2):
            return self.log_rejected
        return _log1m_exp(self.log_remaining())


def _geometric(log_p, masses, test, generator, max_accepts, max_rejects, log_z, calls) -> AWRSSample:
    """genlm-control's geometric AWRS (see the module docstring). The rejection count R is kept as
    log R: the phantom rejections, Geometric(1 - rho) - 1 = floor(log U / log rho), are about
    -log U / (1 - rho) when the remaining mass 1 - rho is tiny, beyond any float count."""
    log_cap = math.inf if max_rejects is None else math.log(max_rejects)
    live = log_p.clone()
    accepts, log_rejects, result = 0, -math.inf, None
    for _ in range(max_accepts):
        if log_rejects >= log_cap:
            break
        for token in _key_order(live, generator):
            if masses.rejected:  # the draws of rejected tokens that sampling without replacement hid
                uniform = float(torch.rand((), generator=generator, dtype=torch.float64).clamp_min(1e-300))
                log_remaining = masses.log_remaining()
                if log_remaining > math.log(1e-8):
                    phantom = math.floor(math.log(uniform) / masses.log_rejected_fraction())
                    log_phantom = math.log(phantom) if phantom > 0 else -math.inf
                else:  # log rho = log1p(-remaining) = -remaining to relative 1e-8
                    log_phantom = math.log(-math.log(uniform)) - log_remaining
                log_rejects = _log_add(log_rejects, log_phantom)
            if log_rejects >= log_cap:
                break
            if test(token):
                accepts += 1
                result = token if result is None else result
                break
            log_rejects = _log_add(log_rejects, 0.0)
            masses.reject(token)
            live[token] = -math.inf
        else:
            break  # every token rejected: a dead end unless one was accepted before
    if accepts == 0:
        return AWRSSample(None, -math.inf, calls())
    log_rejects = min(log_rejects, log_cap)
    log_denominator = _log_add(log_rejects, math.log(accepts - 1)) if accepts > 1 else log_rejects
    log_theta = math.log(min(max_accepts - 1, accepts)) - log_denominator
    return AWRSSample(result, log_z + log_theta, calls())


def _log_add(a: float, b: float) -> float:
    """log(e^a + e^b)."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high = max(a, b)
    return high + math.log(math.exp(a - high) + math.exp(b - high))
