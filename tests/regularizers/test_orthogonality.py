"""lambda-orthogonality by hand (Frobenius gap, sigmoid gate), the strict adapter is exactly
orthogonal (and keeps inner products), gradcheck, modes and errors."""

import math

import pytest
import torch

from divreg.regularizers import AffineAdapter, lambda_orthogonality, orthogonality_gap


def test_gap_and_soft_hinge_by_hand():
    weight = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # W W^T - I = diag(3, 0)
    assert float(orthogonality_gap(weight)) == 3.0
    expected = 3.0 / (1 + math.exp(-0.5 * (3.0 - 1.0)))
    assert abs(float(lambda_orthogonality(weight, lam=1.0, steepness=0.5)) - expected) < 1e-12
    assert float(orthogonality_gap(torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0])) < 1e-12
    free = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: lambda_orthogonality(w, lam=2.0), (free,))


def test_strict_adapter_is_orthogonal_and_modes():
    torch.manual_seed(0)
    strict = AffineAdapter(6, mode="strict", bias=False)
    with torch.no_grad():
        strict.parameter.normal_()
    matrix = strict.matrix()
    assert orthogonality_gap(matrix.detach().double()).item() < 1e-5
    h = torch.randn(10, 6)
    torch.testing.assert_close(strict(h) @ strict(h).T, h @ h.T, rtol=1e-4, atol=1e-4)  # inner products kept
    assert strict.regularizer().item() == 0.0
    loose = AffineAdapter(6, mode="lambda", lam=0.5, weight=2.0)
    with torch.no_grad():
        loose.parameter.mul_(2.0)
    torch.testing.assert_close(loose.regularizer(), 2.0 * lambda_orthogonality(loose.parameter, 0.5))
    torch.testing.assert_close(AffineAdapter(3)(torch.ones(2, 3)), torch.ones(2, 3))  # starts at the identity
    with pytest.raises(ValueError, match="mode must be"):
        AffineAdapter(3, mode="rotation")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        lambda_orthogonality(torch.eye(3), lam=-1)
