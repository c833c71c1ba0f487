"""Exact alignment analytics against independent computations: brute-force maximization over the
simplex, the Bayesian-view identity, Monte Carlo and full enumeration of best-of-N (with ties),
the Bernoulli closed form against enumeration of every sequence, the calibration of a continuous
reward, closed forms in calibrated space, and DPG's expected gradient by enumeration."""

import itertools
import math

import pytest
import torch

import divreg.alignment as A


def _toy(seed=0, size=7):
    g = torch.Generator().manual_seed(seed)
    base = torch.softmax(torch.randn(size, generator=g, dtype=torch.float64), 0)
    rewards = torch.randn(size, generator=g, dtype=torch.float64)
    return base, rewards


def test_tilted_policy_maximizes_the_regularized_objective():
    base, rewards = _toy()
    for beta in (0.1, 0.7, 3.0):
        logits = torch.zeros(7, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            pi = torch.softmax(logits, 0)
            loss = -((pi * rewards).sum() - beta * (pi * (pi.log() - base.log())).sum())
            loss.backward()
            return loss

        for _ in range(5):
            optimizer.step(closure)
        brute = torch.softmax(logits.detach(), 0)
        torch.testing.assert_close(A.tilted_policy(base, rewards, beta), brute, rtol=0, atol=1e-7)
        assert A.regularized_objective(A.tilted_policy(base, rewards, beta), base, rewards, beta) >= \
            A.regularized_objective(brute, base, rewards, beta) - 1e-12


def test_the_bayesian_view_identity_to_1e_10():
    base, rewards = _toy(1)
    g = torch.Generator().manual_seed(5)
    for beta in (0.05, 0.5, 5.0):
        star = A.tilted_policy(base, rewards, beta)
        for _ in range(5):
            pi = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64) * 2, 0)
            left = A.regularized_objective(pi, base, rewards, beta)
            right = -beta * A.kl(pi, star) + beta * A.log_partition(base, rewards, beta)
            assert left == pytest.approx(right, abs=1e-10)


def test_beta_root_finding_reaches_the_targets():
    base, rewards = _toy(2)
    beta = A.beta_for_kl(base, rewards, 0.4)
    assert A.kl(A.tilted_policy(base, rewards, beta), base) == pytest.approx(0.4, abs=1e-9)
    target = float((base * rewards).sum()) + 0.3
    beta = A.beta_for_reward(base, rewards, target)
    assert float((A.tilted_policy(base, rewards, beta) * rewards).sum()) == pytest.approx(target, abs=1e-9)
    with pytest.raises(ValueError, match="target_kl must be in"):
        A.beta_for_kl(base, rewards, 50.0)
    with pytest.raises(ValueError, match="target_reward must be in"):
        A.beta_for_reward(base, rewards, 10.0)


def _enumerated_best_of_n(base, rewards, n):
    """Every n-tuple of base samples, its probability, the best reward's samples tied uniformly."""
    out = torch.zeros_like(base)
    for tuple_ in itertools.product(range(base.numel()), repeat=n):
        weight = math.prod(float(base[i]) for i in tuple_)
        best = max(float(rewards[i]) for i in tuple_)
        winners = [i for i in tuple_ if float(rewards[i]) == best]
        for i in winners:
            out[i] += weight / len(winners)
    return out


def test_best_of_n_by_enumeration_with_ties_and_monte_carlo():
    base = torch.tensor([0.1, 0.25, 0.15, 0.3, 0.2], dtype=torch.float64)
    tied = torch.tensor([1.0, 2.0, 2.0, 0.5, 1.0], dtype=torch.float64)  # two levels of ties
    for n in (1, 2, 3):
        torch.testing.assert_close(A.best_of_n(base, tied, n), _enumerated_best_of_n(base, tied, n), rtol=0,
                                   atol=1e-14)
    # Monte Carlo with distinct rewards: 200000 draws of the best of 4, every outcome within 5 standard errors
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.7, 1.1], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(base, 200000 * 4, replacement=True, generator=g).view(-1, 4)
    best = draws.gather(1, rewards[draws].argmax(1, keepdim=True)).squeeze(1)
    empirical = torch.bincount(best, minlength=5).double() / best.numel()
    exact = A.best_of_n(base, rewards, 4)
    se = (exact * (1 - exact) / best.numel()).sqrt()
    assert bool(((empirical - exact).abs() <= 5 * se + 1e-12).all()), (empirical, exact)


def test_win_rate_by_enumeration():
    """Best-of-3 against the base: P(r(Y) > r(Y0)) + P(=)/2 over every (3-tuple, base sample)."""
    base = torch.tensor([0.1, 0.25, 0.15, 0.3, 0.2], dtype=torch.float64)
    tied = torch.tensor([1.0, 2.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    bon = _enumerated_best_of_n(base, tied, 3)
    expected = sum(float(bon[i] * base[j]) * (1.0 if tied[i] > tied[j] else 0.5 if tied[i] == tied[j] else 0.0)
                   for i in range(5) for j in range(5))
    assert A.win_rate(A.best_of_n(base, tied, 3), base, tied) == pytest.approx(expected, abs=1e-14)
    assert A.win_rate(base, base, tied) == pytest.approx(0.5, abs=1e-14)  # against itself: one half


def test_best_of_n_kl_bound():
    for n in (2, 4, 16, 64):
        base, rewards = _toy(n, size=30)
        assert A.kl(A.best_of_n(base, rewards, n), base) <= A.best_of_n_kl_bound(n) + 1e-12
        # many equal atoms with distinct rewards: the bound is nearly reached
        uniform = torch.full((4000,), 1 / 4000, dtype=torch.float64)
        value = A.kl(A.best_of_n(uniform, torch.arange(4000.0, dtype=torch.float64), n), uniform)
        assert value == pytest.approx(A.best_of_n_kl_bound(n), abs=2e-3 * math.log(n) + 1e-3)
        assert value <= A.best_of_n_kl_bound(n)


def test_bernoulli_closed_forms_against_enumeration():
    for n, p, beta in ((3, 0.3, 0.5), (5, 0.6, 2.0), (6, 0.5, 0.25)):
        sequences = list(itertools.product((0, 1), repeat=n))
        base = torch.tensor([p ** sum(s) * (1 - p) ** (n - sum(s)) for s in sequences], dtype=torch.float64)
        ones = torch.tensor([float(sum(s)) for s in sequences], dtype=torch.float64)
        q = A.bernoulli_tilted_parameter(p, beta)
        product = torch.tensor([q ** sum(s) * (1 - q) ** (n - sum(s)) for s in sequences], dtype=torch.float64)
        torch.testing.assert_close(A.tilted_policy(base, ones, beta), product, rtol=0, atol=1e-14)
        for big_n in (2, 5):
            gap = A.bernoulli_best_of_n_gap(n, big_n, p)
            over_sequences = A.best_of_n(base, ones, big_n)
            assert gap.kl == pytest.approx(A.kl(over_sequences, base), abs=1e-12)
            assert gap.best_of_n_reward == pytest.approx(float((over_sequences * ones).sum()), abs=1e-12)
            matched = A.tilted_policy(base, ones, A.beta_for_kl(base, ones, gap.kl))
            assert gap.tilted_reward == pytest.approx(float((matched * ones).sum()), abs=1e-8)


def test_calibration_of_a_continuous_reward_is_uniform():
    g = torch.Generator().manual_seed(3)
    base = torch.softmax(torch.randn(5000, generator=g, dtype=torch.float64) * 0.3, 0)
    rewards = torch.randn(5000, generator=g, dtype=torch.float64)  # distinct: a continuous reward
    calibrated = A.calibrate(base, rewards)
    order = calibrated.argsort()
    cdf = base[order].cumsum(0)  # P(C <= c) at each value
    assert float((cdf - calibrated[order]).abs().max()) <= float(base.max()) / 2 + 1e-12
    uniform = torch.full((8,), 1 / 8, dtype=torch.float64)
    torch.testing.assert_close(A.calibrate(uniform, torch.arange(8.0)), (torch.arange(8.0, dtype=torch.float64) + 0.5) / 8)


def test_calibrated_space_against_closed_forms():
    """Identity transform: density e^(u/b) / (b (e^(1/b) - 1)); E[u] = 1/(1 - e^(-1/b)) - b,
    KL = E[u]/b - log Z; best-of-1 win rate = E[u]; best-of-2 by a fine trapezoid rule."""
    identity = A.calibrated_transform("identity")
    for beta in (0.2, 1.0, 4.0):
        out = A.calibrated_policy(identity, beta, 1)
        mean = 1 / (1 - math.exp(-1 / beta)) - beta
        assert out.expected_u == pytest.approx(mean, abs=1e-10)
        assert out.kl == pytest.approx(mean / beta - math.log(beta * math.expm1(1 / beta)), abs=1e-10)
        assert out.win_rate == pytest.approx(mean, abs=1e-10)
        u = torch.linspace(0, 1, 200001, dtype=torch.float64)
        density = torch.exp(u / beta) / (beta * math.expm1(1 / beta))
        cdf = (torch.exp(u / beta) - 1) / math.expm1(1 / beta)
        assert A.calibrated_policy(identity, beta, 2).win_rate == pytest.approx(
            float(torch.trapezoid(2 * cdf * density * u ** 2, u)), abs=1e-8)
    for t in (4.0, 64.0):  # exp(64 u) spans e^64: beta is searched relative to Phi's range
        phi = A.calibrated_transform("best_of_n", t)
        beta = A.calibrated_beta_for_kl(phi, 0.7)
        assert A.calibrated_policy(phi, beta).kl == pytest.approx(0.7, abs=1e-8)
        u = torch.linspace(0, 1, 400001, dtype=torch.float64)  # the KL by a fine trapezoid rule
        shifted = phi(u) / beta - float((phi(u) / beta).max())
        log_density = shifted - math.log(float(torch.trapezoid(shifted.exp(), u)))
        assert float(torch.trapezoid(log_density.exp() * log_density, u)) == pytest.approx(0.7, abs=1e-6)


def test_dpg_expected_gradient_is_the_exact_kl_gradient():
    base, rewards = _toy(4, size=6)
    beta = 0.5
    log_target = base.log() + rewards / beta  # P = pi0 exp(r / beta)
    log_z = torch.logsumexp(log_target, 0)
    p = torch.exp(log_target - log_z)
    proposal = torch.softmax(torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4, 0.0], dtype=torch.float64), 0)
    theta = torch.tensor([0.2, -0.1, 0.4, 0.0, 0.3, -0.5], dtype=torch.float64, requires_grad=True)
    (exact,) = torch.autograd.grad((p * (p.log() - torch.log_softmax(theta, 0))).sum(), theta)
    expected = torch.zeros_like(theta)
    for y in range(6):  # one sample y ~ q, weighted by q(y): the expectation exactly
        value = A.dpg_surrogate(torch.log_softmax(theta, 0)[y:y + 1], log_target[y:y + 1], proposal.log()[y:y + 1],
                                log_z).mean()
        (grad,) = torch.autograd.grad(value, theta)
        expected += proposal[y] * grad
    torch.testing.assert_close(expected, exact, rtol=0, atol=1e-12)
    # E_q[P/q] = Z exactly, over one-sample estimates
    z_hat = sum(float(proposal[y]) * math.exp(float(A.log_partition_estimate(log_target[y:y + 1],
                                                                              proposal.log()[y:y + 1])))
                for y in range(6))
    assert z_hat == pytest.approx(math.exp(float(log_z)), rel=1e-12)
    # many samples: the KL estimates approach the exact KLs and the adaptive rule picks the closer one
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(proposal, 400000, replacement=True, generator=g)
    policy = torch.log_softmax(theta.detach(), 0)
    estimates = A.dpg_kl_estimates(policy[samples], log_target[samples], proposal.log()[samples])
    assert estimates.policy == pytest.approx(A.kl(p, policy.exp()), abs=0.01)
    assert estimates.proposal == pytest.approx(A.kl(p, proposal), abs=0.01)
    assert A.adaptive_proposal_update(estimates) == (A.kl(p, policy.exp()) < A.kl(p, proposal))


def test_dpg_toward_a_constraint_and_the_best_transform():
    """P = pi0 x 1[allowed]: samples outside the constraint weigh 0 (no NaN), and the expected
    gradient is again that of KL(p || pi); best_transform_parameter picks the grid's best t."""
    base, _ = _toy(6, size=6)
    allowed = torch.tensor([True, False, True, True, False, True])
    log_target = torch.where(allowed, base.log(), -math.inf)
    log_z = torch.logsumexp(log_target, 0)
    p = torch.exp(log_target - log_z)
    theta = torch.tensor([0.1, 0.3, -0.2, 0.0, 0.5, -0.1], dtype=torch.float64, requires_grad=True)
    (exact,) = torch.autograd.grad(-(p[allowed] * torch.log_softmax(theta, 0)[allowed]).sum(), theta)
    expected = torch.zeros_like(theta)
    for y in range(6):
        value = A.dpg_surrogate(torch.log_softmax(theta, 0)[y:y + 1], log_target[y:y + 1], base.log()[y:y + 1], log_z)
        (grad,) = torch.autograd.grad(value.mean(), theta)
        assert bool(torch.isfinite(grad).all())
        expected += base[y] * grad
    torch.testing.assert_close(expected, exact, rtol=0, atol=1e-12)
    ts = (1.0, 4.0, 16.0)
    t, rate = A.best_transform_parameter("best_of_n", 4, 1.0, ts)
    rates = [A.calibrated_policy(A.calibrated_transform("best_of_n", x),
                                 A.calibrated_beta_for_kl(A.calibrated_transform("best_of_n", x), 1.0), 4).win_rate
             for x in ts]
    assert rate == max(rates) and t == ts[rates.index(max(rates))]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="sum to 1"):
        A.tilted_policy([0.5, 0.6], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="beta must be"):
        A.tilted_policy([0.5, 0.5], [0.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="rewards must be finite"):
        A.best_of_n([0.5, 0.5], [0.0, float("nan")], 2)
    with pytest.raises(ValueError, match="n must be an integer"):
        A.best_of_n([0.5, 0.5], [0.0, 1.0], 0)
    with pytest.raises(ValueError, match="kind must be"):
        A.calibrated_transform("softmax")


def test_review_edge_cases_give_right_answers_or_clear_errors():
    """Huge N (the upper tail below float precision), rewards 1e-10 apart, an overflowing reward,
    a quadrature too coarse for a peaked density, and a constraint no sample satisfies."""
    got = A.best_of_n([1 - 1e-20, 1e-20], [0.0, 1.0], 2 ** 70)
    bottom = math.exp(2 ** 70 * math.log1p(-1e-20))  # (1 - 1e-20)^(2^70): all N samples are the 0-reward one
    torch.testing.assert_close(got, torch.tensor([bottom, -math.expm1(2 ** 70 * math.log1p(-1e-20))],
                                                 dtype=torch.float64), rtol=1e-9, atol=0)
    beta = A.beta_for_kl([1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 1 + 1e-10], 1.0)
    assert A.kl(A.tilted_policy([1 / 3] * 3, [0.0, 1.0, 1 + 1e-10], beta), [1 / 3] * 3) == pytest.approx(1.0, abs=1e-7)
    torch.testing.assert_close(A.tilted_policy([0.5, 0.5], [1e300, 0.0], 1e-10),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="too peaked for the 400-point quadrature"):
        A.calibrated_policy(A.calibrated_transform("identity"), 1e-4, 32)
    with pytest.raises(ValueError, match="no sample has target mass > 0"):
        A.dpg_surrogate(torch.zeros(3), torch.full((3,), -math.inf), torch.zeros(3))
    assert A.bernoulli_best_of_n_gap(16, 10 ** 9).gap_per_token == pytest.approx(0.0, abs=1e-12)
