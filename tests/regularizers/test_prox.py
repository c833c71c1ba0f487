"""Learned proximal networks: psi is convex after clamping (midpoint inequality on random pairs;
its Hessian is positive semi-definite), the prox is psi's gradient (finite differences), the
proximal matching loss by hand."""

import math

import pytest
import torch

from divreg.regularizers import InputConvexNetwork, proximal_matching_loss


def test_psi_is_convex_and_prox_is_its_gradient():
    torch.manual_seed(0)
    psi = InputConvexNetwork(3, hidden=16, layers=3, strong_convexity=0.1).double()
    with torch.no_grad():  # break convexity, then restore it by clamping
        for weight in psi.hidden:
            weight.sub_(0.05)
    psi.clamp()
    assert all(w.min().item() >= 0 for w in psi.hidden) and psi.output.min().item() >= 0
    a, b = torch.randn(200, 3, dtype=torch.float64), torch.randn(200, 3, dtype=torch.float64)
    assert bool((psi((a + b) / 2) <= (psi(a) + psi(b)) / 2 + 1e-12).all())
    point = torch.randn(3, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(lambda y: psi(y[None])[0], point)
    assert float(torch.linalg.eigvalsh(hessian).min()) >= 0.2 - 1e-9  # alpha ||y||^2 with alpha = 0.1: 2 alpha
    y = torch.randn(5, 3, dtype=torch.float64)
    prox = psi.prox(y)
    for i in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[i] = 1e-6
        numeric = (psi(y + step) - psi(y - step)) / 2e-6
        torch.testing.assert_close(prox[:, i], numeric, rtol=1e-6, atol=1e-8)
    trained = psi.prox(y, create_graph=True).sum()
    trained.backward()
    assert psi.output.grad is not None


def test_proximal_matching_loss_by_hand():
    estimate, target = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(2, 2)
    expected = torch.tensor([1 - math.exp(-(5.0 / 2.0) ** 2), 0.0])
    torch.testing.assert_close(proximal_matching_loss(estimate, target, gamma=2.0), expected)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        proximal_matching_loss(estimate, target, gamma=0.0)


def test_the_strong_convexity_term_is_scaled_as_the_reference():
    """The official networks add alpha * ||y||^2 (lpn_mnist.py), so with w = 0 psi is exactly
    that and the prox is 2 alpha y: the reference's MNIST alpha = 0.01 means the same here."""
    psi = InputConvexNetwork(4, hidden=8, layers=2, strong_convexity=0.01).double()
    with torch.no_grad():
        psi.output.zero_()
    y = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(psi(y), 0.01 * y.pow(2).sum(-1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(psi.prox(y), 0.02 * y, rtol=1e-12, atol=1e-15)
