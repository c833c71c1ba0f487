"""gaussian_kl against torch.distributions (scalar and per-element priors), gradcheck, KL(p||p) = 0,
extreme log-variances stay finite, NaN refused."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from divreg.divergences import gaussian_kl


def test_gaussian_kl_equals_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean, log_variance = torch.randn(5, 7, dtype=torch.float64, generator=generator), \
        torch.randn(5, 7, dtype=torch.float64, generator=generator)
    expected = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mean, log_variance), expected, rtol=1e-12, atol=1e-12)
    prior_mean, prior_log_variance = torch.randn(7, dtype=torch.float64, generator=generator), \
        torch.randn(7, dtype=torch.float64, generator=generator)
    expected = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(prior_mean, (0.5 * prior_log_variance).exp()))
    torch.testing.assert_close(gaussian_kl(mean, log_variance, prior_mean, prior_log_variance), expected,
                               rtol=1e-12, atol=1e-12)
    assert float(gaussian_kl(mean, log_variance, mean, log_variance).abs().max()) < 1e-12  # KL(p || p) = 0
    inputs = (mean.clone().requires_grad_(), log_variance.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda m, v: gaussian_kl(m, v, prior_mean, prior_log_variance), inputs)


def test_gaussian_kl_extremes_and_errors():
    values = gaussian_kl(torch.zeros(3), torch.tensor([-80.0, 0.0, 30.0]))
    assert bool(torch.isfinite(values).all()) and float(values[1]) == 0.0 and values.dtype == torch.float32
    with pytest.raises(ValueError, match="holds NaN"):
        gaussian_kl(torch.tensor([float("nan")]), torch.zeros(1))
