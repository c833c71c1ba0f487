"""Independent high-precision references: each divergence written from its textbook
definition with mpmath at 60 significant digits, on probabilities (mixtures formed
directly, no log-space tricks), so they share no code or numerics with divreg."""

from __future__ import annotations

import mpmath
import numpy as np

mpmath.mp.dps = 60


def softmax_mp(logits_row, temperature=1.0):
    """Exact softmax of one row of logits (floats or -inf) as mpmath numbers."""
    scaled = [mpmath.mpf(float(x)) / temperature if np.isfinite(x) else None for x in logits_row]
    top = max(x for x in scaled if x is not None)
    weights = [mpmath.e ** (x - top) if x is not None else mpmath.mpf(0) for x in scaled]
    total = mpmath.fsum(weights)
    return [w / total for w in weights]


def _kl(p, q):
    total = mpmath.mpf(0)
    for pi, qi in zip(p, q):
        if pi == 0:
            continue
        if qi == 0:
            return mpmath.inf
        total += pi * mpmath.log(pi / qi)
    return total


def forward_kl(p, q):
    return _kl(p, q)


def reverse_kl(p, q):
    return _kl(q, p)


def generalized_jsd(p, q, beta, scaled=False):
    beta = mpmath.mpf(beta)
    m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
    value = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    return value / (beta * (1 - beta)) if scaled else value


def skew_kl(p, q, alpha):
    alpha = mpmath.mpf(alpha)
    return _kl(p, [alpha * pi + (1 - alpha) * qi for pi, qi in zip(p, q)])


def skew_reverse_kl(p, q, alpha):
    alpha = mpmath.mpf(alpha)
    return _kl(q, [(1 - alpha) * pi + alpha * qi for pi, qi in zip(p, q)])


def total_variation(p, q):
    return mpmath.fsum(abs(pi - qi) for pi, qi in zip(p, q)) / 2


def alpha_divergence(p, q, alpha):
    alpha = mpmath.mpf(alpha)
    terms = []
    for pi, qi in zip(p, q):
        if pi == 0 and qi == 0:
            continue  # outside both supports: contributes nothing
        if (pi == 0 and alpha < 0) or (qi == 0 and alpha > 1):
            return mpmath.inf
        terms.append(pi**alpha * qi ** (1 - alpha))
    return (mpmath.fsum(terms) - 1) / (alpha * (alpha - 1))


def topk_kl(p, q, k, tail):
    order = sorted(range(len(p)), key=lambda i: -p[i])[:k]
    rest = [i for i in range(len(p)) if i not in order]
    top_p, top_q = [p[i] for i in order], [q[i] for i in order]
    if tail == "renormalize":
        sp, sq = mpmath.fsum(top_p), mpmath.fsum(top_q)
        return _kl([x / sp for x in top_p], [x / sq for x in top_q])
    if tail == "none":  # the full-vocabulary terms on the top-k only
        return _kl(top_p, top_q)
    return _kl(top_p + [mpmath.fsum(p[i] for i in rest)], top_q + [mpmath.fsum(q[i] for i in rest)])


def rowwise(fn, logits, target_logits, temperature=1.0, **kwargs):
    """Apply ``fn(p, q, **kwargs)`` row by row to (..., V) arrays; returns float64 (...)."""
    logits = np.asarray(logits, dtype=np.float64)
    target_logits = np.asarray(target_logits, dtype=np.float64)
    flat_q = logits.reshape(-1, logits.shape[-1])
    flat_p = target_logits.reshape(-1, target_logits.shape[-1])
    out = [
        float(fn(softmax_mp(p_row, temperature), softmax_mp(q_row, temperature), **kwargs))
        for q_row, p_row in zip(flat_q, flat_p)
    ]
    return np.array(out).reshape(logits.shape[:-1])
