"""Log-domain Sinkhorn against POT's sinkhorn_log (same iterations), and the soft
cross-entropy against scipy."""

import math

import numpy as np
import ot
import pytest
import scipy.special
import torch

from divreg.divergences import cross_entropy, forward_kl, sinkhorn_distance, sinkhorn_plan


def _cost(seed, rows=6, columns=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, columns, generator=generator, dtype=torch.float64) * 2


@pytest.mark.parametrize("epsilon,n_iters", [(0.1, 20), (0.05, 7), (1.0, 1), (0.01, 50)])
def test_plan_matches_pot_sinkhorn_log(epsilon, n_iters):
    cost = _cost(seed=n_iters)
    a = np.full(6, 1 / 6)
    b = np.full(5, 1 / 5)
    expected = ot.sinkhorn(a, b, cost.numpy(), reg=epsilon, method="sinkhorn_log", numItermax=n_iters,
                           stopThr=0.0, warn=False)
    np.testing.assert_allclose(sinkhorn_plan(cost, epsilon=epsilon, n_iters=n_iters).numpy(), expected,
                               rtol=1e-10, atol=1e-14)
    expected_distance = ot.sinkhorn2(a, b, cost.numpy(), reg=epsilon, method="sinkhorn_log",
                                     numItermax=n_iters, stopThr=0.0, warn=False)
    assert abs(sinkhorn_distance(cost, epsilon=epsilon, n_iters=n_iters).item() - float(expected_distance)) < 1e-12


def test_plan_with_given_marginals_and_its_row_sums():
    cost = _cost(seed=3)
    a = torch.tensor([0.1, 0.2, 0.3, 0.1, 0.2, 0.1], dtype=torch.float64)
    b = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)
    plan = sinkhorn_plan(cost, epsilon=0.2, n_iters=200, source_weights=a, target_weights=b)
    expected = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), reg=0.2, method="sinkhorn_log", numItermax=200,
                           stopThr=0.0, warn=False)
    np.testing.assert_allclose(plan.numpy(), expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(plan.sum(1), a, rtol=1e-12, atol=1e-14)  # rows exact after the f update
    torch.testing.assert_close(plan.sum(0), b, rtol=1e-8, atol=1e-10)  # columns converged


def test_tiny_epsilon_stays_finite_and_approaches_exact_ot():
    cost = _cost(seed=4, rows=5, columns=5)
    exact = ot.emd2(np.full(5, 0.2), np.full(5, 0.2), cost.numpy())
    value = sinkhorn_distance(cost, epsilon=1e-3, n_iters=2000)
    assert torch.isfinite(value)
    assert abs(value.item() - exact) < 5e-3


def test_gradcheck_through_the_iterations():
    cost = _cost(seed=5, rows=4, columns=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: sinkhorn_distance(c, epsilon=0.3, n_iters=10), (cost,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


def test_sinkhorn_bad_inputs():
    cost = _cost(seed=6)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_plan(cost, epsilon=0.0)
    with pytest.raises(ValueError, match="n_iters"):
        sinkhorn_plan(cost, n_iters=0)
    with pytest.raises(ValueError, match="matrix"):
        sinkhorn_plan(cost[0])
    with pytest.raises(ValueError, match="source_weights"):
        sinkhorn_plan(cost, source_weights=torch.ones(6, dtype=torch.float64))
    bad = cost.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn_plan(bad)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_cross_entropy_against_scipy(temperature):
    generator = torch.Generator().manual_seed(7)
    logits = 3 * torch.randn(4, 7, generator=generator, dtype=torch.float64)
    target_logits = 3 * torch.randn(4, 7, generator=generator, dtype=torch.float64)
    q = scipy.special.softmax(logits.numpy() / temperature, axis=-1)
    p = scipy.special.softmax(target_logits.numpy() / temperature, axis=-1)
    expected = -(p * np.log(q)).sum(-1)
    got = cross_entropy(logits, target_logits, temperature=temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    entropy = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(got.numpy(), forward_kl(logits, target_logits, temperature=temperature).numpy() + entropy,
                               rtol=1e-12)


def test_cross_entropy_with_one_hot_target_is_nll():
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 1, 2])
    target = torch.nn.functional.one_hot(labels, 4).double()
    got = cross_entropy(logits, target.log())
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, labels, reduction="none"),
                               rtol=1e-14, atol=1e-15)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    assert torch.isfinite(grad).all()
