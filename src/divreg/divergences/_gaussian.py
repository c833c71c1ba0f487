r"""KL divergence between diagonal Gaussians, element by element (the variational term of VAEs and
variational sparse autoencoders).

.. math::
    KL(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(\mu_0, \sigma_0^2)) = \tfrac12\Big(
    \frac{\sigma^2 + (\mu - \mu_0)^2}{\sigma_0^2} - 1 + \log\sigma_0^2 - \log\sigma^2\Big)

from log-variances (never variances, so a very small sigma stays finite).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor


def gaussian_kl(mean: Tensor, log_variance: Tensor, prior_mean: Union[float, Tensor] = 0.0,
                prior_log_variance: Union[float, Tensor] = 0.0) -> Tensor:
    """Per-element KL(N(mean, exp(log_variance)) || N(prior_mean, exp(prior_log_variance))), in
    fp32 (fp64 kept), unreduced; the default prior is N(0, 1).

    Args:
        mean, log_variance: broadcastable tensors (the latents' posterior).
        prior_mean, prior_log_variance: numbers or broadcastable tensors.

    Returns:
        The broadcast shape; sum over latents for a VAE's KL term.

    Example:
        >>> float(gaussian_kl(torch.tensor(1.0), torch.tensor(0.0)))
        0.5
    """
    dtype = torch.float64 if mean.dtype == torch.float64 else torch.float32
    mean, log_variance = mean.to(dtype), log_variance.to(dtype)
    prior_mean = torch.as_tensor(prior_mean, dtype=dtype, device=mean.device)
    prior_log_variance = torch.as_tensor(prior_log_variance, dtype=dtype, device=mean.device)
    if bool(torch.isnan(mean).any()) or bool(torch.isnan(log_variance).any()):
        raise ValueError("gaussian_kl: mean or log_variance holds NaN")
    ratio = torch.exp(log_variance - prior_log_variance)
    return 0.5 * (ratio + (mean - prior_mean) ** 2 * torch.exp(-prior_log_variance) - 1 - log_variance
                  + prior_log_variance)
