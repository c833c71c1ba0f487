"""MAID on the official code's quadratic problem (smaller): the inexact hypergradient converges to
the closed-form gradient of f as eps and delta shrink; the cross-derivative norm is the largest
singular value of A3^T A2; MAID reaches the closed-form optimum; the fixed-accuracy variant with a
coarse eps stalls above it."""

import pytest
import torch

from divreg.regularizers import MAID


def problem(seed: int = 0, n: int = 60, m: int = 4):
    generator = torch.Generator().manual_seed(seed)
    a1, a2, a3 = (torch.randn(n, m, dtype=torch.float64, generator=generator) for _ in range(3))  # (the code: uniform; Gaussian conditions f better)
    b1, b2 = torch.rand(n, dtype=torch.float64, generator=generator), torch.rand(n, dtype=torch.float64, generator=generator)
    lower = lambda x, t: 0.5 * (a2 @ x + a3 @ t - b2).pow(2).sum()  # noqa: E731
    upper = lambda x: 0.5 * (a1 @ x - b1).pow(2).sum()  # noqa: E731
    eig = torch.linalg.eigvalsh(a2.T @ a2)
    solve = torch.linalg.solve(a2.T @ a2, a2.T)  # M: x*(theta) = M (b2 - A3 theta)
    gradient = lambda t: -(a1 @ solve @ a3).T @ (a1 @ solve @ (b2 - a3 @ t) - b1)  # noqa: E731
    value = lambda t: 0.5 * (a1 @ solve @ (b2 - a3 @ t) - b1).pow(2).sum()  # noqa: E731
    k = a1 @ solve @ a3
    optimum = torch.linalg.lstsq(k, a1 @ solve @ b2 - b1).solution
    maid = dict(mu=float(eig[0]), lipschitz=float(eig[-1]), upper_lipschitz=float(torch.linalg.eigvalsh(a1.T @ a1)[-1]))
    return lower, upper, maid, gradient, value, optimum, (a2, a3)


def test_hypergradient_and_cross_norm():
    lower, upper, constants, gradient, _, _, (a2, a3) = problem()
    theta = torch.ones(4, dtype=torch.float64)
    errors = []
    for accuracy in (1e-1, 1e-3, 1e-6):
        method = MAID(lower, upper, eps=accuracy, delta=accuracy, **constants)
        state = method.start(torch.zeros(4, dtype=torch.float64), theta)
        p, _ = method.hypergradient(state)
        errors.append(float((p - gradient(theta)).norm()))
        bound = method.error_bound(state)
        assert errors[-1] <= bound * 1.0001 + 1e-12  # the a-posteriori bound holds here
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5 * float(gradient(theta).norm())
    expected = float(torch.linalg.matrix_norm(a3.T @ a2, ord=2))
    assert abs(method.cross_norm(state.x, theta) - expected) < 1e-8 * expected


def test_maid_reaches_the_closed_form_optimum_and_coarse_fixed_accuracy_stalls():
    lower, upper, constants, _, value, optimum, _ = problem()
    start = (torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    best = float(value(optimum))
    adaptive = MAID(lower, upper, **constants).run(*start, budget=5_000)
    gap = float(value(adaptive.theta)) - best
    assert 0 <= gap < 1e-6 * (float(value(start[1])) - best)
    coarse = MAID(lower, upper, eps=0.1, delta=0.1, adaptive=False, **constants).run(*start, budget=5_000)
    assert float(value(coarse.theta)) - best > 10 * gap
    with pytest.raises(ValueError, match="need mu > 0"):
        MAID(lower, upper, mu=0.0, lipschitz=1.0, upper_lipschitz=1.0)
