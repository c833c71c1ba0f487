r"""lambda-orthogonality: an affine map between two embedding spaces that may depart from an
orthogonal one by about lambda (Ricci et al., "lambda-Orthogonality Regularization for
Compatible Representation Learning", 2025, arXiv 2509.16664; official code
github.com/miccunifi/lambda_orthogonality, which we could not read: the formulas below are the
issue's, the steepness ``a`` an option).

.. math::
    B(h) = W h + b,\qquad d(W) = \|W W^\top - I\|_F,\qquad
    L_\lambda(W) = \sigma\big(a\,(d(W) - \lambda)\big)\; d(W),

a soft hinge: almost no pull while d(W) < lambda, the plain penalty d(W) above it. The strict
variant is exactly orthogonal: W = exp(P) with P = A - A^T skew-symmetric (the matrix
exponential of a skew-symmetric matrix is a rotation).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from ..schedules import Schedule, as_schedule


def orthogonality_gap(weight: Tensor) -> Tensor:
    """:math:`\\|W W^\\top - I\\|_F` of a (d_out, d_in) matrix (rows orthonormal when 0).

    Example:
        >>> import math, torch
        >>> c, s = math.cos(0.3), math.sin(0.3)
        >>> round(float(orthogonality_gap(torch.tensor([[c, -s], [s, c]]))), 4)  # a rotation
        0.0
        >>> round(float(orthogonality_gap(2 * torch.eye(2))), 4)  # ||4I - I||_F = 3 sqrt(2)
        4.2426
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a matrix, got shape {tuple(weight.shape)}")
    gram = weight @ weight.T
    return torch.linalg.matrix_norm(gram - torch.eye(len(gram), dtype=gram.dtype, device=gram.device))


def lambda_orthogonality(weight: Tensor, lam: float = 12.0, steepness: float = 1.0) -> Tensor:
    """:math:`\\sigma(a (d(W) - \\lambda)) d(W)` (a scalar). ``lam`` = 12 is the paper's value in
    its adaptation setting (per the issue); ``steepness`` a was not available: default 1.

    Example:
        >>> import torch
        >>> weight = 2 * torch.eye(2)  # gap d(W) = 3 sqrt(2) = 4.2426
        >>> round(float(lambda_orthogonality(weight)), 4)  # well under lambda = 12: almost no pull
        0.0018
        >>> round(float(lambda_orthogonality(weight, lam=0.0)), 4)  # sigmoid(4.2426) * 4.2426
        4.1825
    """
    if lam < 0 or steepness <= 0:
        raise ValueError(f"lam must be >= 0 and steepness > 0, got {lam}, {steepness}")
    gap = orthogonality_gap(weight)
    return torch.sigmoid(steepness * (gap - lam)) * gap


class AffineAdapter(torch.nn.Module):
    """B(h) = W h + b from one embedding space to another (same dimension), with its
    regularizer: ``mode="lambda"`` (W free, :func:`lambda_orthogonality` times ``weight(step)``),
    ``"strict"`` (W = exp(A - A^T), orthogonal, no regularizer) or ``"affine"`` (W free, none)."""

    def __init__(self, dim: int, *, mode: str = "lambda", lam: float = 12.0, steepness: float = 1.0,
                 weight: Union[float, Schedule] = 1.0, bias: bool = True):
        super().__init__()
        if mode not in ("lambda", "strict", "affine"):
            raise ValueError(f"mode must be 'lambda', 'strict' or 'affine', got {mode!r}")
        self.mode, self.lam, self.steepness, self.weight = mode, lam, steepness, as_schedule(weight)
        self.parameter = torch.nn.Parameter(torch.zeros(dim, dim) if mode == "strict" else torch.eye(dim))
        self.bias = torch.nn.Parameter(torch.zeros(dim)) if bias else None

    def matrix(self) -> Tensor:
        if self.mode == "strict":
            return torch.linalg.matrix_exp(self.parameter - self.parameter.T)
        return self.parameter

    def forward(self, h: Tensor) -> Tensor:
        out = h @ self.matrix().T
        return out + self.bias if self.bias is not None else out

    def regularizer(self, step: int = 0) -> Tensor:
        if self.mode != "lambda":
            return self.parameter.sum() * 0.0
        return self.weight(step) * lambda_orthogonality(self.parameter, self.lam, self.steepness)
