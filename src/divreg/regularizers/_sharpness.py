r"""IGNITE: penalize the norm of the gradient of a surrogate's mean prediction with respect to its
parameters, so that gradient ascent on the surrogate (offline black-box optimization) lands
where the surrogate is trustworthy (Cuong et al., "Incorporating Surrogate Gradient Norm to
Improve Offline Optimization Techniques", 2025; official code github.com/cuong-dm/IGNITE).

With :math:`G(\theta) = \mathrm{mean}_x f_\theta(x)` and :math:`g = \nabla_\theta G`, the penalty
:math:`\lambda \rho \|g\|` has gradient :math:`\lambda\rho H g/\|g\|`, computed without a Hessian
by a finite difference along g:

.. math::
    \nabla_\theta(\lambda\rho\|g\|) \approx \frac{\lambda\rho}{r}\big(\nabla G(\theta + r\, g/\|g\|) - \nabla G(\theta)\big),

exact when G is quadratic in theta. The weight follows the dual update
:math:`\lambda \leftarrow \max(0, \lambda + \eta(\rho\|g\| - \epsilon))` each step (eps 0.1,
lambda_0 1e-3, eta 1e-3, rho = r = 0.05, per the issue; the clamp at 0 is ours: a Lagrange
multiplier of an inequality constraint is non-negative); ``dual=False`` keeps lambda fixed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def surrogate_gradient_norm_grads(model: torch.nn.Module, mean_prediction: Callable[[], Tensor], *,
                                  rho: float = 0.05, radius: float = 0.05) -> tuple[list[Tensor], float]:
    """(per-parameter :math:`\\frac{\\rho}{r}(\\nabla G(\\theta + r\\hat g) - \\nabla G(\\theta))`, and
    :math:`\\|g\\|`), where ``mean_prediction()`` evaluates G with the model's current parameters.
    The parameters are restored exactly; multiply the gradients by lambda and add them to the
    task gradients.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(2.0)
        >>> x = torch.ones(3, 1)  # G(w) = w^2: g = 2w = 4, H g / ||g|| = 2, so rho * 2 = 0.1
        >>> grads, norm = surrogate_gradient_norm_grads(model, lambda: model(x).pow(2).mean())
        >>> norm, round(float(grads[0]), 4), model.weight.item()  # the weight restored
        (4.0, 0.1, 2.0)
    """
    if rho < 0 or radius <= 0:
        raise ValueError(f"rho must be >= 0 and radius > 0, got {rho}, {radius}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(mean_prediction(), parameters, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if float(norm) == 0.0:
        return [torch.zeros_like(p) for p in parameters], 0.0
    steps = [radius * g / norm for g in grads]
    with torch.no_grad():
        for p, s in zip(parameters, steps):
            p.add_(s)
    try:
        shifted = torch.autograd.grad(mean_prediction(), parameters, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, s in zip(parameters, steps):
                p.sub_(s)
    shifted = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, shifted)]
    return [rho / radius * (a - b) for a, b in zip(shifted, grads)], float(norm)


class IgniteDual:
    """The multiplier of IGNITE's constraint rho ||g|| <= eps: lambda <- max(0, lambda + eta (rho ||g|| - eps))."""

    def __init__(self, lam: float = 1e-3, eta: float = 1e-3, eps: float = 0.1, rho: float = 0.05, dual: bool = True):
        if lam < 0 or eta < 0 or eps < 0 or rho < 0:
            raise ValueError("lam, eta, eps and rho must be >= 0")
        self.lam, self.eta, self.eps, self.rho, self.dual = lam, eta, eps, rho, dual

    def update(self, gradient_norm: float) -> float:
        if self.dual:
            self.lam = max(0.0, self.lam + self.eta * (self.rho * gradient_norm - self.eps))
        return self.lam
