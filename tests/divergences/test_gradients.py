"""float64 gradcheck of every divergence, in both arguments, at several temperatures,
including extreme logits and banned (-inf) tokens."""

import math

import pytest
import torch

from .cases import CASE_IDS, CASES


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name,fn,reference", CASES, ids=CASE_IDS)
def test_gradcheck_random_logits(name, fn, reference, temperature):
    generator = torch.Generator().manual_seed(11)
    logits = (2 * torch.randn(2, 3, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    target_logits = (2 * torch.randn(2, 3, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: fn(x, y, temperature=temperature), (logits, target_logits), eps=1e-6, atol=1e-7, rtol=1e-5
    )


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name,fn,reference", CASES, ids=CASE_IDS)
def test_gradcheck_extreme_logits(name, fn, reference, temperature):
    if name.startswith("alpha_") and name not in ("alpha_0.5", "alpha_0.2"):
        pytest.skip("alpha outside (0, 1) is astronomically large (exp(1e4)) on these inputs")
    logits = torch.tensor([[1e4, -1e4, 0.3, 3.0, -2.0], [5.0, 1e4, 1e4 - 1.0, 0.0, 1.0]], dtype=torch.float64)
    target_logits = torch.tensor([[1e4 - 0.5, 1e4, -1e4, 1.0, 2.0], [0.0, 1e4 - 2.0, 1e4, 1.0, 2.5]],
                                 dtype=torch.float64)
    logits.requires_grad_()
    target_logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, temperature=temperature), (logits, target_logits),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,fn,reference", CASES, ids=CASE_IDS)
def test_gradcheck_with_banned_tokens(name, fn, reference):
    inf = math.inf
    logits = torch.tensor([[0.3, -inf, 1.0, 0.2, -0.5, 1.5]], dtype=torch.float64, requires_grad=True)
    target_logits = torch.tensor([[1.2, -inf, -0.7, 0.9, 0.1, -1.0]], dtype=torch.float64)
    # gradcheck perturbs every entry, -inf included; check the finite ones only
    finite = torch.isfinite(logits.detach())

    def on_finite(free):
        full = logits.detach().clone()
        full[finite] = free
        return fn(full, target_logits)

    assert torch.autograd.gradcheck(on_finite, (logits.detach()[finite].clone().requires_grad_(),),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)
