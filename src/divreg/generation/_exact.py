r"""Exact distributions on an enumerable toy: the global constrained posterior, locally constrained
decoding, and importance resampling with N particles; KL and total variation between them.

With outputs of at most ``max_tokens`` tokens over a small vocabulary, every prefix the
constraint allows can be listed:

- the posterior :math:`\pi(y) = g(y)/Z`, :math:`g(y) = p(y\,\mathrm{EOS}) c(y)`;
- locally constrained decoding (token masking) :math:`q(y) = \prod_t p(y_t|y_{<t}) c / Z_t(y_{<t})`,
  and its failure probability (it reaches a prefix where no token is allowed, or an incomplete
  output at ``max_tokens``);
- importance resampling of N outputs drawn from q with weights :math:`w = g/q` (``smc`` with
  ``sampler="masking"``, ``ess_threshold=0``): the chance it returns y is
  :math:`P_N(y) = N q(y) w(y) E[1/(w(y) + S_{N-1})]`, S the sum of N - 1 independent weights (0
  for a failure), and :math:`1/x = \int_0^\infty e^{-tx} dt` gives
  :math:`P_N(y) = N q(y) w(y) \int_0^\infty e^{-t w(y)} M(t)^{N-1} dt`,
  :math:`M(t) = E_q[e^{-t w}]`: one integral per output, by composite Gauss-Legendre quadrature in
  ln t (checked against the exact binomial sum for two outputs and ``scipy.integrate.quad`` in the
  tests). It fails (all N particles failed) with probability :math:`f^N`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ._smc import check_pairing

FAILURE = None  # the key of the failure outcome in distributions that have one


def _children(lm, constraint, prefix, max_tokens):
    """(log p of each allowed next token, allowed tokens) after ``prefix``; EOS is the only
    candidate once ``prefix`` has ``max_tokens`` tokens."""
    log_probs = lm.next_log_probs(prefix).double()
    eos = lm.eos_token_id
    candidates = [eos] if len(prefix) >= max_tokens else range(log_probs.numel())
    allowed = [t for t in candidates if float(log_probs[t]) > -math.inf and constraint(prefix, t)]
    return log_probs, allowed


def exact_posterior(lm, constraint, max_tokens: int) -> tuple[dict, float]:
    """``({y: pi(y)}, log Z)`` for the particle model ``lm`` (``next_log_probs``) under ``constraint``.

    Example:
        >>> import math, torch
        >>> from divreg.generation import BigramLM, Predicate
        >>> lm = BigramLM(torch.zeros(3), torch.zeros(3, 3), eos_token_id=2)  # uniform over {0, 1, EOS}
        >>> no_one = Predicate(lambda ids: 1 not in ids, eos_token_id=2)
        >>> pi, log_z = exact_posterior(lm, no_one, max_tokens=1)
        >>> # g(()) = p(EOS) = 1/3, g((0,)) = p(0) p(EOS|0) = 1/9: Z = 4/9, pi = 3/4 and 1/4
        >>> {y: round(v, 4) for y, v in sorted(pi.items())}, round(math.exp(log_z), 4)
        ({(): 0.75, (0,): 0.25}, 0.4444)
    """
    check_pairing(lm, constraint)
    g: dict = {}
    stack = [((), 0.0)]
    while stack:
        prefix, log_p = stack.pop()
        log_probs, allowed = _children(lm, constraint, prefix, max_tokens)
        for token in allowed:
            value = log_p + float(log_probs[token])
            if token == lm.eos_token_id:
                g[prefix] = value
            else:
                stack.append((prefix + (token,), value))
    if not g:
        raise ValueError("the constraint allows no output of at most max_tokens tokens: the posterior is undefined")
    values = np.array(list(g.values()))
    log_z = float(np.logaddexp.reduce(values))
    return {y: math.exp(v - log_z) for y, v in g.items()}, log_z


def exact_locally_constrained(lm, constraint, max_tokens: int) -> tuple[dict, float]:
    """``({y: q(y)}, failure probability)`` of locally constrained decoding.

    Example:
        >>> import torch
        >>> from divreg.generation import BigramLM, Predicate
        >>> lm = BigramLM(torch.zeros(3), torch.zeros(3, 3), eos_token_id=2)  # uniform over {0, 1, EOS}
        >>> only_0 = Predicate(lambda ids: True, lambda ids: ids == (0,), eos_token_id=2)  # complete: (0,) only
        >>> q, failure = exact_locally_constrained(lm, only_0, max_tokens=1)
        >>> # token 0 or 1, 1/2 each (EOS refused); after 1 the forced EOS is refused: a dead end
        >>> {y: round(v, 4) for y, v in q.items()}, round(failure, 4)
        ({(0,): 0.5}, 0.5)
    """
    check_pairing(lm, constraint)
    q: dict = {}
    failure = 0.0
    stack = [((), 0.0)]
    while stack:
        prefix, log_q = stack.pop()
        log_probs, allowed = _children(lm, constraint, prefix, max_tokens)
        if not allowed:
            failure += math.exp(log_q)
            continue
        local = np.array([float(log_probs[t]) for t in allowed])
        log_z = float(np.logaddexp.reduce(local))
        for token, value in zip(allowed, local):
            if token == lm.eos_token_id:
                q[prefix] = math.exp(log_q + value - log_z)
            else:
                stack.append((prefix + (token,), log_q + value - log_z))
    return q, failure


def exact_importance_resampling(pi: dict, q: dict, failure: float, n: int, nodes: int = 16) -> tuple[dict, float]:
    """``({y: P_n(y)}, failure probability)``: one output of importance resampling with ``n``
    draws from ``q`` (failure mass ``failure``) and weights proportional to ``pi / q`` (P_n does
    not depend on their scale).

    The integral over t is taken in ln t, from where the integrand is 1 to 1e-12 (below: its
    length) to where :math:`e^{-t w_{min}}` is :math:`e^{-60}`, by Gauss-Legendre with ``nodes``
    points on each panel of width 1/2: the integrand's scales run from 1/(N w_max) to 1/w_min.
    The result is checked: if the probabilities and the failure do not sum to 1, a
    ``RuntimeError`` says so rather than returning them (1e-8).

    Example:
        >>> pi, q = {(0,): 0.5, (1,): 0.5}, {(0,): 0.8, (1,): 0.2}  # weights pi / q: 0.625 and 2.5
        >>> p2, fails = exact_importance_resampling(pi, q, failure=0.0, n=2)
        >>> # (0,) twice: 0.64; one of each (0.32): (0,) kept with probability 0.625 / 3.125 = 0.2
        >>> round(p2[(0,)], 4), round(p2[(1,)], 4), fails
        (0.704, 0.296, 0.0)
        >>> p2, fails = exact_importance_resampling({(0,): 1.0}, {(0,): 0.5}, failure=0.5, n=2)
        >>> round(p2[(0,)], 4), round(fails, 4)  # fails when both draws fail: 0.5 ** 2
        (0.75, 0.25)
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    outputs = [y for y in q if q[y] > 0]
    missing = [y for y in pi if pi[y] > 0 and q.get(y, 0.0) == 0.0]
    if missing:
        raise ValueError(f"q gives probability 0 to {len(missing)} outputs of the posterior (e.g. {missing[0]})")
    # an output of weight 0 (pi = 0) gives its particle weight 0: a failure, as in smc
    failure = float(failure) + sum(q[y] for y in outputs if pi.get(y, 0.0) <= 0)
    outputs = [y for y in outputs if pi.get(y, 0.0) > 0]
    if not outputs:
        raise ValueError("every output of q has weight 0 under pi: importance resampling always fails")
    qs = np.array([q[y] for y in outputs])
    ws = np.array([pi[y] for y in outputs]) / qs
    if n == 1:
        return {y: float(v) for y, v in zip(outputs, qs)}, failure
    positive = ws
    ws = ws / positive.max()  # the largest weight 1 (P_n does not depend on the scale)
    low, high = math.log(1e-12 / n), math.log(60.0 * positive.max() / positive.min())
    panels = max(1, math.ceil((high - low) * 2))
    u, du = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(low, high, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    log_t = ((edges[:-1, None] + edges[1:, None]) / 2 + half * u[None, :]).ravel()
    t, dt = np.exp(log_t), (half * du[None, :]).ravel() * np.exp(log_t)
    decay = np.exp(-np.outer(t, ws))  # (nodes, outputs): e^{-t w}
    moment = decay @ qs + failure  # M(t)
    kernel = dt * np.exp((n - 1) * np.log(np.maximum(moment, 1e-300)))
    integral = kernel @ decay + math.exp(low)  # + the piece [0, t_low], where the integrand is 1
    values = n * qs * ws * integral
    out = {y: float(v) for y, v in zip(outputs, values)}
    total = float(values.sum()) + failure ** n
    if abs(total - 1.0) > 1e-8:
        raise RuntimeError(f"the quadrature did not converge (probabilities sum to {total:.9f}): raise nodes, or "
                           "check that q and failure sum to 1")
    return out, failure ** n


def distribution_kl(p: dict, q: dict) -> float:
    """KL(p || q) over dict distributions (inf where p > 0 = q): distributions over enumerated
    outputs, sparse and keyed by sequence, where :mod:`divreg.divergences` compares dense logit
    vectors over one vocabulary (building those would enumerate every possible output).

    Example:
        >>> pi, q = {(): 0.75, (0,): 0.25}, {(): 0.5, (0,): 0.5}
        >>> round(distribution_kl(pi, q), 4)  # 0.75 log(0.75 / 0.5) + 0.25 log(0.25 / 0.5)
        0.1308
        >>> distribution_kl(pi, pi), distribution_kl(pi, {(): 1.0})  # itself: 0; (0,) missing from q: inf
        (0.0, inf)
    """
    total = 0.0
    for y, value in p.items():
        if value <= 0:
            continue
        other = q.get(y, 0.0)
        if other <= 0:
            return math.inf
        total += value * math.log(value / other)
    return total


def outcome_total_variation(p: dict, q: dict, p_failure: float = 0.0, q_failure: float = 0.0) -> float:
    """Half the L1 distance between two distributions over *outputs* (dicts of sequences, sparse
    over an enumerated space; failures, no output, an outcome of their own): not
    :func:`divreg.divergences.total_variation`, which compares two logit vectors over one
    vocabulary.

    Example:
        >>> outcome_total_variation({(): 0.75, (0,): 0.25}, {(): 0.5, (0,): 0.5})  # (0.25 + 0.25) / 2
        0.25
        >>> outcome_total_variation({(0,): 1.0}, {(0,): 0.5}, q_failure=0.5)  # failure is an outcome too
        0.5
    """
    keys = set(p) | set(q)
    return 0.5 * (sum(abs(p.get(y, 0.0) - q.get(y, 0.0)) for y in keys) + abs(p_failure - q_failure))


def given_success(q: dict, failure: float) -> Optional[dict]:
    """q given that an output was produced (None if it never is).

    Example:
        >>> given_success({(0,): 0.3, (1,): 0.2}, failure=0.5)  # divided by the success mass 0.5
        {(0,): 0.6, (1,): 0.4}
        >>> given_success({}, failure=1.0) is None
        True
    """
    mass = 1.0 - failure
    return None if mass <= 0 else {y: v / mass for y, v in q.items()}
