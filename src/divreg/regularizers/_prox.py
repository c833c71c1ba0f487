r"""Learned proximal networks: a learned prior enters only through its proximal operator, and an
input-convex network makes that operator the exact prox of *some* regularizer (Fang, Buchanan &
Sulam, "What's in a Prior? Learned Proximal Networks for Inverse Problems", ICLR 2024, arXiv
2310.14344; official code github.com/ZhenghanFang/learned-proximal-networks, also published as
Sulam-Group/learned-proximal-networks).

.. math::
    z_1 = s(H_0 y + b_0),\quad z_{k+1} = s(W_k z_k + H_k y + b_k)\ (W_k \ge 0),\quad
    \psi(y) = w^\top z_K + \alpha\|y\|^2\ (w \ge 0),\qquad f(y) = \nabla\psi(y),

the strong-convexity term scaled as the official networks do (``lpn_mnist.py``: ``y + self.alpha *
x.pow(2).sum(...)``, so f gains :math:`2\alpha y`): the reference's MNIST ``alpha = 0.01``
(``exps/mnist/configs/mnist/model.json``) means the same here;
with s convex and non-decreasing (softplus), so psi is convex and f is a prox (the non-negative
weights are clamped after each optimizer step: :meth:`InputConvexNetwork.clamp`). The proximal
matching loss :math:`1 - \exp(-(\|f(y) - x\|/\gamma)^2)` with gamma shrinking in stages (after an
L1 warm-up) drives f toward the MAP denoiser (the prox of -log p), where the squared loss gives
the MMSE one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class InputConvexNetwork(torch.nn.Module):
    r"""psi(y), convex in y (see the module docstring); :meth:`prox` is its gradient.
    ``strong_convexity`` is alpha of :math:`\alpha\|y\|^2` (the reference's ``alpha``): psi is
    then :math:`2\alpha`-strongly convex and the prox :math:`(1 / 2\alpha)`-Lipschitz at most."""

    def __init__(self, dim: int, hidden: int = 64, layers: int = 2, *, strong_convexity: float = 0.0,
                 beta: float = 10.0):
        super().__init__()
        if layers < 1 or hidden < 1 or strong_convexity < 0:
            raise ValueError("layers and hidden must be >= 1, strong_convexity >= 0")
        self.inputs = torch.nn.ModuleList([torch.nn.Linear(dim, hidden) for _ in range(layers)])  # H_k y + b_k
        self.hidden = torch.nn.ParameterList([torch.nn.Parameter(torch.rand(hidden, hidden) / hidden)
                                              for _ in range(layers - 1)])  # W_k >= 0
        self.output = torch.nn.Parameter(torch.rand(hidden) / hidden)  # w >= 0
        self.strong_convexity, self.beta = strong_convexity, beta

    def forward(self, y: Tensor) -> Tensor:
        """(B,) psi of (B, dim) inputs."""
        z = F.softplus(self.inputs[0](y), beta=self.beta)
        for weight, layer in zip(self.hidden, self.inputs[1:]):
            z = F.softplus(z @ weight.T + layer(y), beta=self.beta)
        return z @ self.output + self.strong_convexity * y.pow(2).sum(-1)  # alpha ||y||^2, as the reference

    def prox(self, y: Tensor, create_graph: bool = False) -> Tensor:
        """f(y) = grad psi(y), (B, dim); ``create_graph`` to train through it."""
        with torch.enable_grad():
            y = y if y.requires_grad else y.clone().requires_grad_()
            (gradient,) = torch.autograd.grad(self(y).sum(), y, create_graph=create_graph)
        return gradient

    @torch.no_grad()
    def clamp(self) -> None:
        """Project the hidden-to-hidden and output weights back to >= 0 (after each step)."""
        for weight in self.hidden:
            weight.clamp_(min=0)
        self.output.clamp_(min=0)


def proximal_matching_loss(estimate: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Per-example :math:`1 - \\exp(-(\\|\\hat x - x\\|_2 / \\gamma)^2)` over the last dim.

    Example:
        >>> import torch
        >>> estimate, target = torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> [round(v, 4) for v in proximal_matching_loss(estimate, target, gamma=5.0).tolist()]  # 1 - exp(-1); exact: 0
        [0.6321, 0.0]
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return 1 - torch.exp(-((estimate - target).norm(dim=-1) / gamma) ** 2)
