"""AWRS by exact enumeration of the key orders (Plackett-Luce: sampling without replacement): the
first accepted token is distributed as p c / Z and both weight estimators are unbiased,
E[w 1{X = x}] = p(x) c(x), token by token; the Gumbel keys realize that order distribution
(frequencies within 5 standard errors); dead ends; errors."""

import itertools
import math

import pytest
import torch

from divreg.generation import _awrs, awrs, gumbel_order

P = torch.tensor([0.05, 0.3, 0.15, 0.4, 0.1], dtype=torch.float64)
ALLOWED = {0, 2, 4}  # the likeliest tokens are refused: many rejections


def _order_probability(order) -> float:
    remaining, probability = 1.0, 1.0
    for token in order:
        probability *= float(P[token]) / remaining
        remaining -= float(P[token])
    return probability


@pytest.mark.parametrize("estimator", ["recursive", "two_pass"])
def test_exact_distribution_and_unbiased_weights(monkeypatch, estimator):
    orders = list(itertools.permutations(range(5)))
    expected_mass = {x: 0.0 for x in range(5)}
    expected_weight = {x: 0.0 for x in range(5)}
    pairs = itertools.product(orders, orders) if estimator == "two_pass" else ((o,) for o in orders)
    for draws in pairs:
        sequence = iter(draws)
        monkeypatch.setattr(_awrs, "_key_order", lambda log_probs, generator=None: iter(next(sequence)))
        sample = awrs(P.log() + 2.0, lambda t: t in ALLOWED, estimator=estimator)  # unnormalized: Z_p = e^2
        probability = math.prod(_order_probability(o) for o in draws)
        expected_mass[sample.token] += probability
        expected_weight[sample.token] += probability * math.exp(sample.log_weight)
    z = sum(float(P[x]) for x in ALLOWED)
    for x in range(5):
        target = float(P[x]) * (x in ALLOWED)
        assert abs(expected_mass[x] - target / z) < 1e-12, x
        assert abs(expected_weight[x] - math.exp(2.0) * target) < 1e-12, x


def test_gumbel_keys_sample_the_constrained_distribution_and_dead_ends():
    generator = torch.Generator().manual_seed(0)
    draws = [awrs(P.log(), lambda t: t in ALLOWED, generator=generator).token for _ in range(4000)]
    z = sum(float(P[x]) for x in ALLOWED)
    for x in ALLOWED:
        frequency, exact = draws.count(x) / 4000, float(P[x]) / z
        assert abs(frequency - exact) < 5 * math.sqrt(exact * (1 - exact) / 4000)
    dead = awrs(P.log(), lambda t: False)
    assert dead.token is None and dead.log_weight == -math.inf and dead.constraint_calls == 5
    with pytest.raises(ValueError, match="estimator must be one of"):
        awrs(P.log(), lambda t: True, estimator="bogus")
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        awrs(torch.tensor([0.0, math.inf]), lambda t: True)
    with pytest.raises(ValueError, match="torch tensor, got ndarray"):
        awrs(P.log().numpy(), lambda t: True)
    with pytest.raises(ValueError, match="the geometric estimator's; 'recursive' has none"):
        awrs(P.log(), lambda t: True, max_rejects=3)
    with pytest.raises(ValueError, match="max_accepts must be at least 2"):
        awrs(P.log(), lambda t: True, estimator="geometric", max_accepts=1)
    with pytest.raises(ValueError, match="every token probability 0"):
        awrs(torch.full((3,), -math.inf), lambda t: True)


@pytest.mark.slow
@pytest.mark.parametrize("max_accepts", [2, 4])
def test_geometric_estimator_is_unbiased(max_accepts):
    """Geometric draws make exact enumeration infinite: Monte Carlo, every E[w 1{x}] within 5
    standard errors of p(x) c(x) (15k seeded draws), and the first accepted token ~ p c / Z."""
    generator, n = torch.Generator().manual_seed(1), 15_000
    sums, squares, counts = [0.0] * 5, [0.0] * 5, [0] * 5
    for _ in range(n):
        sample = awrs(P.log() + 2.0, lambda t: t in ALLOWED, estimator="geometric", max_accepts=max_accepts,
                      generator=generator)
        w = math.exp(sample.log_weight)
        sums[sample.token] += w
        squares[sample.token] += w * w
        counts[sample.token] += 1
    z = sum(float(P[x]) for x in ALLOWED)
    for x in range(5):
        target = math.exp(2.0) * float(P[x]) * (x in ALLOWED)
        mean = sums[x] / n
        se = math.sqrt(max(squares[x] / n - mean ** 2, 0.0) / n)
        assert abs(mean - target) <= 5 * se + 1e-12, (x, mean, target, se)
        exact = float(P[x]) * (x in ALLOWED) / z
        assert abs(counts[x] / n - exact) <= 5 * math.sqrt(exact * (1 - exact) / n) + 1e-12


def test_auto_rule_and_a_reject_cap():
    peaked = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64).log()
    calls = []
    sample = awrs(peaked, lambda t: calls.append(t) or True, estimator="auto",
                  generator=torch.Generator().manual_seed(0))
    # geometric with everything allowed: two acceptances, no rejection: theta = 1 / (2 + 0 - 1) = 1
    assert sample.log_weight == pytest.approx(0.0, abs=1e-12) and sample.constraint_calls == len(set(calls))
    capped = awrs(P.log(), lambda t: t == 0, estimator="geometric", max_rejects=2,
                  generator=torch.Generator().manual_seed(0))
    assert capped.token in (None, 0) and (capped.token is None) == (capped.log_weight == -math.inf)


def test_lazy_key_order_is_the_full_sort_of_the_same_keys():
    log_probs = torch.randn(3000, generator=torch.Generator().manual_seed(5), dtype=torch.float64).log_softmax(0)
    log_probs[[3, 70, 2999]] = -math.inf
    uniform = torch.rand(3000, generator=torch.Generator().manual_seed(6), dtype=torch.float64).clamp_min(1e-300)
    full = torch.argsort(log_probs - torch.log(-torch.log(uniform)), descending=True)
    expected = [t for t in full.tolist() if t not in (3, 70, 2999)]
    assert gumbel_order(log_probs, torch.Generator().manual_seed(6)) == expected


@pytest.mark.parametrize("estimator", ["recursive", "two_pass"])
@pytest.mark.parametrize("tiny", [1e-13, 1e-20, 1e-200])
def test_unbiased_when_the_allowed_mass_is_below_the_rounding_of_one(monkeypatch, estimator, tiny):
    """Masses are summed directly, never as 1 - rho: E[w 1{x}] = p(x) c(x) to 1e-12 relative by
    exact enumeration even when the allowed token's probability is 1e-200."""
    log_probs = torch.tensor([math.log1p(-tiny), math.log(tiny), math.log(tiny) - 1.0], dtype=torch.float64) + 40.0
    p = (log_probs - torch.logsumexp(log_probs, 0)).exp().tolist()

    def order_probability(order):  # Plackett-Luce, each denominator summed directly
        return math.prod(p[token] / sum(p[t] for t in order[i:]) for i, token in enumerate(order))

    orders = list(itertools.permutations(range(3)))
    pairs = itertools.product(orders, orders) if estimator == "two_pass" else ((o,) for o in orders)
    expected = 0.0
    for draws in pairs:
        sequence = iter(draws)
        monkeypatch.setattr(_awrs, "_key_order", lambda log_p, generator=None: iter(next(sequence)))
        sample = awrs(log_probs, lambda t: t == 1, estimator=estimator)
        assert sample.token == 1
        expected += math.prod(order_probability(o) for o in draws) * math.exp(sample.log_weight - 40.0)
    assert expected == pytest.approx(p[1], rel=1e-12)


def test_geometric_and_auto_survive_a_tiny_allowed_mass():
    log_probs = torch.tensor([30.0, 0.0, 0.0], dtype=torch.float64)  # p(token 1) = 9.4e-14
    p1 = float(torch.softmax(log_probs, 0)[1])
    weights = []
    generator = torch.Generator().manual_seed(0)
    for estimator in ("geometric", "auto") * 2000:
        sample = awrs(log_probs - 30.0, lambda t: t == 1, estimator=estimator, generator=generator)
        assert sample.token == 1
        weights.append(math.exp(sample.log_weight))
    mean, se = sum(weights) / len(weights), (sum(w * w for w in weights) / len(weights)) ** 0.5 / len(weights) ** 0.5
    assert abs(mean - p1) < 5 * se and 0.5 * p1 < mean < 2 * p1


CASES = [  # (log-probs as a caller would pass them, allowed tokens)
    (torch.tensor([0.0, -40.0, -41.0], dtype=torch.float64), {1, 2}),
    (torch.tensor([0.0, math.log(1e-200), -math.inf, math.log(1e-200) - 3, -1.0], dtype=torch.float64), {1, 3}),
    (torch.tensor([0.0, -120.0, -math.inf, -0.5]), {1}),  # float32
    (torch.tensor([0.0, -800.0], dtype=torch.float64), {1}),
]


@pytest.mark.parametrize("estimator", ["recursive", "two_pass"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_unbiased_on_plain_log_probs_with_tiny_allowed_mass(monkeypatch, estimator, case):
    """No log1p-built inputs: logsumexp rounds log p-bar of the top token to exactly 0 here, and the
    weights must still be exact (the rejection factors telescope to the remaining mass)."""
    log_probs, allowed = CASES[case]
    log_zp = torch.logsumexp(log_probs.double(), 0).item()
    log_p = (log_probs.double() - log_zp).tolist()
    finite = [t for t, v in enumerate(log_p) if v > -math.inf]
    log_g = torch.logsumexp(torch.tensor([log_p[t] for t in allowed], dtype=torch.float64), 0).item()

    def log_order_probability(order):  # Plackett-Luce in logs, each denominator summed directly
        return sum(log_p[token] - torch.logsumexp(torch.tensor([log_p[t] for t in order[i:]], dtype=torch.float64),
                                                  0).item() for i, token in enumerate(order))

    orders = list(itertools.permutations(finite))
    pairs = itertools.product(orders, orders) if estimator == "two_pass" else ((o,) for o in orders)
    expected = {t: 0.0 for t in allowed}
    for draws in pairs:
        sequence = iter(draws)
        monkeypatch.setattr(_awrs, "_key_order", lambda lp, generator=None: iter(next(sequence)))
        sample = awrs(log_probs, lambda t: t in allowed, estimator=estimator)
        assert sample.log_weight > -math.inf
        log_probability = sum(log_order_probability(o) for o in draws)
        expected[sample.token] += math.exp(log_probability + sample.log_weight - log_zp - log_g)
    for t in allowed:  # E[w 1{x}] / (Z_p g) = p(x) c(x) / g, g the allowed mass
        assert expected[t] == pytest.approx(math.exp(log_p[t] - log_g), rel=1e-10), t


@pytest.mark.parametrize("case", range(len(CASES)))
def test_geometric_on_plain_log_probs_with_tiny_allowed_mass(case):
    log_probs, allowed = CASES[case]
    log_g = torch.logsumexp(log_probs.double()[sorted(allowed)], 0).item()  # Z_p g
    generator, n = torch.Generator().manual_seed(2), 3000
    ratios = [math.exp(awrs(log_probs, lambda t: t in allowed, estimator="geometric",
                            generator=generator).log_weight - log_g) for _ in range(n)]
    mean = sum(ratios) / n
    se = math.sqrt(sum((r - mean) ** 2 for r in ratios) / n / n)
    assert abs(mean - 1.0) < 5 * se + 1e-9, (mean, se)


def test_gumbel_order_ignores_an_offset():
    """Keys on normalized log-probabilities: with an offset of 1e17 (where 1e17 + noise rounds the
    noise away) two equally likely tokens still come first half of the time each."""
    generator = torch.Generator().manual_seed(0)
    firsts = [gumbel_order(torch.tensor([1e17, 1e17], dtype=torch.float64), generator)[0] for _ in range(2000)]
    assert abs(firsts.count(0) / 2000 - 0.5) < 5 * math.sqrt(0.25 / 2000)
