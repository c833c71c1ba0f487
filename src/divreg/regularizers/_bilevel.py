r"""Learning regularization parameters by bilevel optimization with adaptively inexact
hypergradients: MAID (Salehi, Mukherjee, Roberts & Ehrhardt, "An adaptively inexact first-order
method for bilevel optimization with application to hyperparameter learning", 2023/2024, arXiv
2308.10098; official code github.com/MohammadSadeghSalehi/MAID, ``MAID.py``).

.. math::
    \min_\theta f(\theta) = g(x^*(\theta)),\qquad x^*(\theta) = \arg\min_x h(x, \theta),\qquad
    \nabla f = -\partial^2_{\theta x} h\, [\nabla^2_{xx} h]^{-1} \nabla g,

h mu-strongly convex in x. Each outer step: solve the lower level to accuracy eps (gradient
descent with step 1/L from the previous solution until :math:`\|\nabla_x h\|/\mu < \epsilon`, so
:math:`\|x - x^*\| < \epsilon`), solve the Hessian system by conjugate gradient to residual delta
(from zero), form the inexact hypergradient p; tighten eps and delta by tau while the
a-posteriori error bound omega exceeds (1 - eta)||p||; then a backtracking line search on
:math:`\theta - \beta\rho^i p` accepted when

.. math::
    g(x_{new}) + \|\nabla g(x_{new})\|\epsilon + \tfrac{L_g}{2}\epsilon^2 - g(x) + \|\nabla g(x)\|\epsilon
    \le -\beta\rho^i \eta \|p\|^2,

success loosening eps and delta by nu and growing beta by 10/9, failure (after ``max_backtracks``)
tightening them by tau (up to 3 attempts per step). ``adaptive=False`` keeps eps and delta fixed
(the fixed-accuracy baseline).

Departures, documented: the error bound is :math:`\omega = (B/\mu)(L_g\epsilon + \delta)` with B the
operator norm of the cross derivative (a few power iterations), exact for a lower level quadratic
in x with a cross term independent of x (with a learned weight decay e^theta ||x||^2 / 2 the cross
term e^theta x depends on x, and the bound is a first-order approximation); the official code adds terms with Lipschitz constants it
estimates at random points. The code's sufficient decrease uses eta squared, we use eta (with
eta = 1e-4 the two barely differ). Its FISTA resets its momentum every iteration (plain gradient
descent): we use gradient descent and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import torch
from torch import Tensor


@dataclass
class MAIDState:
    """Where a :class:`MAID` run is: the outer parameters ``theta``, the inner solution ``x``, the
    current lower-level accuracy ``eps``, conjugate-gradient residual ``delta`` and initial outer
    step size ``beta``, the work done (inner and conjugate-gradient iterations) and the history of
    accepted steps."""
    theta: Tensor
    x: Tensor
    eps: float
    delta: float
    beta: float
    lower_iterations: int = 0
    cg_iterations: int = 0
    history: list = field(default_factory=list)  # (total inner iterations, theta) after each accepted step


def _grad_x(lower, x: Tensor, theta: Tensor, create_graph: bool = False) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(lower(x, theta.detach()), x, create_graph=create_graph)
    return gradient


class MAID:
    """MAID for ``lower(x, theta)`` (mu-strongly convex in x, gradient L-Lipschitz; ``mu`` and
    ``lipschitz`` numbers or functions of theta, e.g. with a learned weight decay e^theta) and
    ``upper(x)`` (gradient L_g-Lipschitz). :meth:`step` takes one outer step; :meth:`run` several."""

    def __init__(self, lower: Callable[[Tensor, Tensor], Tensor], upper: Callable[[Tensor], Tensor], *,
                 mu: Union[float, Callable[[Tensor], float]], lipschitz: Union[float, Callable[[Tensor], float]],
                 upper_lipschitz: float, eps: float = 0.1, delta: float = 0.1, eta: float = 1e-4,
                 rho: float = 0.5, tau: float = 0.5, nu: float = 1.25, beta: float = 0.01, max_backtracks: int = 10,
                 attempts: int = 3, max_inner: int = 2000, adaptive: bool = True):
        self._mu = mu if callable(mu) else (lambda theta, value=float(mu): value)
        self._lipschitz = lipschitz if callable(lipschitz) else (lambda theta, value=float(lipschitz): value)
        if callable(mu) or callable(lipschitz):
            mu_value = lipschitz_value = None
        else:
            mu_value, lipschitz_value = float(mu), float(lipschitz)
        if (mu_value is not None and not (mu_value > 0 and lipschitz_value >= mu_value)) or not (
                upper_lipschitz >= 0 and 0 < rho < 1 and 0 < tau < 1 and nu >= 1):
            raise ValueError("need mu > 0, lipschitz >= mu, upper_lipschitz >= 0, 0 < rho < 1, 0 < tau < 1, nu >= 1")
        self.lower, self.upper, self.upper_lipschitz = lower, upper, upper_lipschitz
        self.eta, self.rho, self.tau, self.nu, self.max_backtracks = eta, rho, tau, nu, max_backtracks
        self.attempts, self.max_inner, self.adaptive = attempts, max_inner, adaptive
        self.defaults = (eps, delta, beta)

    def start(self, x: Tensor, theta: Tensor) -> MAIDState:
        eps, delta, beta = self.defaults
        state = MAIDState(theta.detach().clone(), x.detach().clone(), eps, delta, beta)
        state.x = self.solve_lower(state, state.x, state.theta)
        state.history.append((0, state.theta.clone()))
        return state

    def solve_lower(self, state: MAIDState, x: Tensor, theta: Tensor) -> Tensor:
        """Gradient descent from ``x`` until ||grad_x h|| / mu < eps (then one more step)."""
        for _ in range(self.max_inner):
            gradient = _grad_x(self.lower, x, theta)
            state.lower_iterations += 1
            x = x - gradient / self._lipschitz(theta)
            if float(gradient.norm()) / self._mu(theta) < state.eps:
                break
        return x.detach()

    def conjugate_gradient(self, state: MAIDState, x: Tensor, theta: Tensor, rhs: Tensor) -> Tensor:
        """Solve grad_xx^2 h q = rhs from zero until ||residual|| < delta (Hessian-vector products)."""
        def hvp(v: Tensor) -> Tensor:
            with torch.enable_grad():
                xg = x.detach().requires_grad_()
                (gradient,) = torch.autograd.grad(self.lower(xg, theta.detach()), xg, create_graph=True)
                (product,) = torch.autograd.grad(gradient, xg, grad_outputs=v)
            return product.detach()

        q, r = torch.zeros_like(rhs), rhs.clone()
        direction, norm = r.clone(), float(r.pow(2).sum())
        for _ in range(self.max_inner):
            if norm ** 0.5 < state.delta:
                break
            product = hvp(direction)
            state.cg_iterations += 1
            step = norm / float((direction * product).sum())
            q, r = q + step * direction, r - step * product
            new_norm = float(r.pow(2).sum())
            direction, norm = r + (new_norm / norm) * direction, new_norm
        return q

    def _cross(self, x: Tensor, theta: Tensor, v: Tensor) -> Tensor:
        """(d^2_{theta x} h) v = grad_theta <grad_x h(x, theta), v>."""
        with torch.enable_grad():
            xg, tg = x.detach().requires_grad_(), theta.detach().requires_grad_()
            (gradient,) = torch.autograd.grad(self.lower(xg, tg), xg, create_graph=True)
            (product,) = torch.autograd.grad((gradient * v).sum(), tg)
        return product.detach()

    def _adjoint(self, x: Tensor, theta: Tensor, u: Tensor) -> Tensor:
        """(d^2_{x theta} h) u = grad_x <grad_theta h(x, theta), u>."""
        with torch.enable_grad():
            xg, tg = x.detach().requires_grad_(), theta.detach().requires_grad_()
            (gradient,) = torch.autograd.grad(self.lower(xg, tg), tg, create_graph=True)
            (product,) = torch.autograd.grad((gradient * u).sum(), xg)
        return product.detach()

    def cross_norm(self, x: Tensor, theta: Tensor, iterations: int = 20) -> float:
        """B = operator norm of the cross derivative, by power iteration on J^T J (J v = _cross)."""
        v = torch.ones_like(x) / x.numel() ** 0.5
        value = 0.0
        for _ in range(iterations):
            u = self._cross(x, theta, v)
            value = float(u.norm())
            if value == 0.0:
                return 0.0
            back = self._adjoint(x, theta, u)
            v = back / back.norm().clamp_min(1e-300)
        return value

    def hypergradient(self, state: MAIDState) -> tuple[Tensor, Tensor]:
        """(p = -(d^2_{theta x} h) q with q from CG on grad g, grad g) at the current point."""
        with torch.enable_grad():
            xg = state.x.detach().requires_grad_()
            (grad_g,) = torch.autograd.grad(self.upper(xg), xg)
        q = self.conjugate_gradient(state, state.x, state.theta, grad_g.detach())
        return -self._cross(state.x, state.theta, q), grad_g.detach()

    def error_bound(self, state: MAIDState) -> float:
        """omega = (B / mu) (L_g eps + delta) (see the module docstring)."""
        return self.cross_norm(state.x, state.theta) / self._mu(state.theta) * (
            self.upper_lipschitz * state.eps + state.delta)

    def step(self, state: MAIDState) -> bool:
        """One outer step; True when a new theta was accepted."""
        for _ in range(self.attempts):
            p, grad_g = self.hypergradient(state)
            while self.adaptive and self.error_bound(state) > (1 - self.eta) * float(p.norm()) and state.eps > 1e-12:
                state.eps, state.delta = state.eps * self.tau, state.delta * self.tau
                state.x = self.solve_lower(state, state.x, state.theta)
                p, grad_g = self.hypergradient(state)
            g_old, p_norm2 = float(self.upper(state.x)), float(p.pow(2).sum())
            for i in range(self.max_backtracks):
                size = state.beta * self.rho ** i
                theta_new = state.theta - size * p
                x_new = self.solve_lower(state, state.x, theta_new)
                with torch.enable_grad():
                    xg = x_new.detach().requires_grad_()
                    g_new = self.upper(xg)
                    (grad_new,) = torch.autograd.grad(g_new, xg)
                lhs = (g_new.item() + float(grad_new.norm()) * state.eps + self.upper_lipschitz * state.eps ** 2 / 2
                       - g_old + float(grad_g.norm()) * state.eps)
                if lhs <= -size * self.eta * p_norm2:
                    state.theta, state.x, state.beta = theta_new.detach(), x_new, size * 10 / 9
                    if self.adaptive:
                        state.eps, state.delta = state.eps * self.nu, state.delta * self.nu
                    state.history.append((state.lower_iterations + state.cg_iterations, state.theta.clone()))
                    return True
            if not self.adaptive:
                return False
            state.eps, state.delta = state.eps * self.tau, state.delta * self.tau
            state.x = self.solve_lower(state, state.x, state.theta)
        return False

    def run(self, x: Tensor, theta: Tensor, *, budget: int) -> MAIDState:
        """Outer steps until ``budget`` lower-level plus CG iterations are spent."""
        state = self.start(x, theta)
        while state.lower_iterations + state.cg_iterations < budget:
            before = state.lower_iterations + state.cg_iterations
            accepted = self.step(state)
            if not accepted and state.lower_iterations + state.cg_iterations == before:
                break
        return state
