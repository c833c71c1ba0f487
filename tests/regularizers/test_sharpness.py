"""IGNITE's finite difference equals the exact gradient of rho ||grad G|| for a quadratic G (and
approaches it for a non-quadratic one as r shrinks); parameters restored; the dual update."""

import pytest
import torch

from divreg.regularizers import IgniteDual, surrogate_gradient_norm_grads


class Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(4, 4, dtype=torch.float64, generator=generator)
        self.a, self.b = a @ a.T, torch.randn(4, dtype=torch.float64, generator=generator)
        self.theta = torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=generator))

    def forward(self):
        return 0.5 * self.theta @ self.a @ self.theta + self.b @ self.theta


def test_finite_difference_is_exact_for_a_quadratic():
    model = Quadratic()
    before = model.theta.detach().clone()
    grads, norm = surrogate_gradient_norm_grads(model, model, rho=0.05, radius=0.05)
    expected = 0.05 * model.a @ (model.a @ before + model.b) / (model.a @ before + model.b).norm()  # rho A g / ||g||
    torch.testing.assert_close(grads[0], expected, rtol=1e-9, atol=1e-12)
    assert abs(norm - float((model.a @ before + model.b).norm())) < 1e-9
    assert torch.equal(model.theta.detach(), before)  # restored exactly


def test_finite_difference_converges_for_a_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    parameters = list(net.parameters())
    g = torch.autograd.grad(net(x).mean(), parameters, create_graph=True)
    exact = torch.autograd.grad(0.05 * torch.sqrt(sum(t.pow(2).sum() for t in g)), parameters, allow_unused=True)
    exact = [torch.zeros_like(p) if e is None else e for p, e in zip(parameters, exact)]  # the last bias: constant
    errors = []
    for radius in (1e-1, 1e-2, 1e-3):
        grads, _ = surrogate_gradient_norm_grads(net, lambda: net(x).mean(), rho=0.05, radius=radius)
        errors.append(max(float((a - b).abs().max()) for a, b in zip(grads, exact)))
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5


def test_dual_update_and_errors():
    dual = IgniteDual(lam=1e-3, eta=1e-3, eps=0.1, rho=0.05)
    assert abs(dual.update(10.0) - (1e-3 + 1e-3 * (0.5 - 0.1))) < 1e-15
    assert dual.update(0.0) == pytest.approx(1e-3 + 1e-3 * 0.4 - 1e-3 * 0.1)
    for _ in range(100):
        dual.update(0.0)
    assert dual.lam == 0.0  # clamped at 0
    fixed = IgniteDual(lam=0.5, dual=False)
    assert fixed.update(100.0) == 0.5
    with pytest.raises(ValueError, match="radius > 0"):
        surrogate_gradient_norm_grads(torch.nn.Linear(1, 1), lambda: torch.zeros(()), radius=0)
