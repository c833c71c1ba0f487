"""The estimators' docstring claims, proven by exact enumeration of small categorical
policies: expectations are sums over all K tokens weighted by pi (not samples), and "used as
a loss" means the pi weights are constants and only log pi is differentiated."""

import mpmath
import pytest
import torch

from divreg import estimators as E


def _policies(seed, num_tokens=6):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(num_tokens, generator=generator, dtype=torch.float64, requires_grad=True)
    phi = torch.randn(num_tokens, generator=generator, dtype=torch.float64)
    return theta, phi


def _expected_as_loss(estimator, theta, phi):
    """E_{x ~ pi}[k(x)] with pi's weights held constant: the on-policy surrogate loss."""
    logprobs = torch.log_softmax(theta, -1)
    ref_logprobs = torch.log_softmax(phi, -1)
    return (logprobs.detach().exp() * estimator(logprobs, ref_logprobs)).sum()


def _true_kls(theta, phi):
    policy = torch.distributions.Categorical(logits=theta)
    reference = torch.distributions.Categorical(logits=phi)
    return (torch.distributions.kl_divergence(policy, reference),
            torch.distributions.kl_divergence(reference, policy))


def _grad(value, theta):
    return torch.autograd.grad(value, theta)[0]


@pytest.mark.parametrize("seed", range(5))
def test_k1_unbiased_value_and_zero_gradient(seed):
    theta, phi = _policies(seed)
    loss = _expected_as_loss(E.k1, theta, phi)
    reverse, _ = _true_kls(theta, phi)
    torch.testing.assert_close(loss, reverse, rtol=1e-12, atol=1e-14)
    assert _grad(loss, theta).abs().max() < 1e-14


@pytest.mark.parametrize("seed", range(5))
def test_k2_biased_value_but_unbiased_reverse_kl_gradient(seed):
    theta, phi = _policies(seed)
    loss = _expected_as_loss(E.k2, theta, phi)
    reverse, _ = _true_kls(theta, phi)
    assert abs(loss.item() - reverse.item()) > 1e-3  # biased: not the KL
    torch.testing.assert_close(_grad(loss, theta), _grad(reverse, theta), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(5))
def test_k3_unbiased_value_but_forward_kl_gradient(seed):
    theta, phi = _policies(seed)
    loss = _expected_as_loss(E.k3, theta, phi)
    reverse, forward = _true_kls(theta, phi)
    torch.testing.assert_close(loss, reverse, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, theta), _grad(forward, theta), rtol=1e-12, atol=1e-14)
    reverse_grad = _grad(_true_kls(theta, phi)[0], theta)
    assert (_grad(_expected_as_loss(E.k3, theta, phi), theta) - reverse_grad).abs().max() > 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_k3_k2grad_has_k3_value_and_reverse_kl_gradient(seed):
    theta, phi = _policies(seed)
    loss = _expected_as_loss(E.k3_k2grad, theta, phi)
    reverse, _ = _true_kls(theta, phi)
    torch.testing.assert_close(loss, reverse, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, theta), _grad(reverse, theta), rtol=1e-12, atol=1e-14)


def test_per_sample_values():
    logprobs = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    ref_logprobs = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
    r = logprobs - ref_logprobs
    torch.testing.assert_close(E.k1(logprobs, ref_logprobs), r, rtol=0, atol=0)
    torch.testing.assert_close(E.k2(logprobs, ref_logprobs), r**2 / 2, rtol=1e-15, atol=0)
    ratio = torch.exp(ref_logprobs - logprobs)
    torch.testing.assert_close(E.k3(logprobs, ref_logprobs), ratio - 1 - torch.log(ratio), rtol=1e-14, atol=1e-16)
    assert (E.k3(logprobs, ref_logprobs) >= 0).all()
    # k3 keeps relative precision for tiny r, where exp(-r) - 1 + r cancels
    for r in (1e-9, -1e-4, 0.0499, -0.0501, 0.1, 3.0, -20.0):  # both sides of the series switch
        with mpmath.workdps(50):
            exact = float(mpmath.exp(-mpmath.mpf(r)) - 1 + r)
        for dtype, rtol in ((torch.float32, 3e-6), (torch.float64, 1e-13)):
            got = E.k3(torch.tensor([r], dtype=dtype), torch.zeros(1, dtype=dtype)).item()
            assert abs(got - exact) <= rtol * exact, (r, dtype, got, exact)
    assert E.k1(logprobs.half(), ref_logprobs.half()).dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        E.k3(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="ref_logprobs contains NaN"):
        E.k1(torch.zeros(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="floating-point"):
        E.k2(torch.zeros(2, dtype=torch.long), torch.zeros(2))
