r"""Per-token KL estimators from sampled tokens (Schulman's k1, k2, k3).

With tokens sampled from the model :math:`\pi` and :math:`r = \log\pi(x) - \log\pi_{ref}(x)`
(``logprobs - ref_logprobs``), each function returns one value per token, unreduced.
"Used as a loss" below means: averaged over on-policy samples and differentiated through
``logprobs`` only (the sampling itself is not differentiated), as RL trainers do.

References:
    Schulman. "Approximating KL Divergence", 2020, http://joschu.net/blog/kl-approx.html.
    Shao et al. "DeepSeekMath" (GRPO's k3 penalty), 2024, arXiv 2402.03300.
    Zhang et al. "On the Design of KL-Regularized Policy Gradient Algorithms for LLM
    Reasoning", 2025, arXiv 2505.17508 (which gradient each estimator gives as a loss).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"shape mismatch: logprobs {tuple(logprobs.shape)} vs ref_logprobs "
            f"{tuple(ref_logprobs.shape)}; both hold one log-prob per sampled token"
        )
    for name, tensor in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        if not torch.is_floating_point(tensor):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if bool(torch.isnan(tensor).any()):
            raise ValueError(f"{name} contains NaN; check the forward pass that produced it")
    dtype = torch.promote_types(torch.promote_types(logprobs.dtype, ref_logprobs.dtype), torch.float32)
    return logprobs.to(dtype) - ref_logprobs.to(dtype)


def _k3_from_log_ratio(r: Tensor) -> Tensor:
    """``exp(-r) - 1 + r`` with full relative precision: for |r| < 0.05 its Taylor series to
    r^8 (truncation error < 1e-14 relative, gradient included), where the direct form
    would cancel to 0."""
    inner = 1 / 120 - r * (1 / 720 - r * (1 / 5040 - r / 40320))
    series = r.square() * (1 / 2 - r * (1 / 6 - r * (1 / 24 - r * inner)))
    small = r.abs() < 0.05
    return torch.where(small, series, torch.expm1(-torch.where(small, 0.0, r)) + r)


def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""k1 = r = log pi(x) - log pi_ref(x).

    Value: unbiased for :math:`\mathrm{KL}(\pi \| \pi_{ref})`, but each sample can be negative
    and the variance is high.

    Used as a loss: zero gradient in expectation, :math:`E_\pi[\nabla \log \pi] = 0`. Use it as
    a reward penalty (``reward - beta * k1``, the REINFORCE/PPO way), not as a loss.

    Args:
        logprobs: (...) log-probs of the sampled tokens under the model.
        ref_logprobs: (...) their log-probs under the reference.

    Returns:
        Tensor of the same shape, fp32 (fp64 for fp64 inputs).

    Example:
        >>> import torch
        >>> pi, ref = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])  # each token once, weighted by pi
        >>> values = k1(pi.log(), ref.log())
        >>> [round(v, 4) for v in values.tolist()]  # log(pi / ref): one sample is negative
        [0.4055, -0.6931]
        >>> round(float((pi * values).sum()), 4)  # unbiased: KL(pi || ref) = 0.75 log 1.5 + 0.25 log 0.5
        0.1308
    """
    return _log_ratio(logprobs, ref_logprobs)


def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""k2 = r^2 / 2.

    Value: biased (it is an f-divergence with :math:`f(u) = \tfrac12 \log^2 u`, close to KL
    only when :math:`\pi \approx \pi_{ref}`), always >= 0.

    Used as a loss: :math:`E_\pi[r \nabla \log \pi] = \nabla \mathrm{KL}(\pi \| \pi_{ref})`,
    the unbiased *reverse*-KL gradient.

    Args:
        logprobs: (...) log-probs of the sampled tokens under the model.
        ref_logprobs: (...) their log-probs under the reference.

    Returns:
        Tensor of the same shape.

    Example:
        >>> import torch
        >>> pi, ref = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])  # each token once, weighted by pi
        >>> values = k2(pi.log(), ref.log())
        >>> [round(v, 4) for v in values.tolist()]  # r^2 / 2 >= 0
        [0.0822, 0.2402]
        >>> round(float((pi * values).sum()), 4)  # biased: KL(pi || ref) is 0.1308
        0.1217
    """
    return 0.5 * _log_ratio(logprobs, ref_logprobs).square()


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""k3 = exp(-r) - 1 + r = pi_ref/pi - 1 - log(pi_ref/pi) (GRPO's penalty).

    Value: unbiased for :math:`\mathrm{KL}(\pi \| \pi_{ref})`, >= 0 per sample, low variance.
    Computed as ``expm1(-r) + r``, or its Taylor series for |r| < 0.05 (no cancellation).

    Used as a loss: :math:`E_\pi[(1 - \pi_{ref}/\pi)\nabla\log\pi] = -E_{\pi_{ref}}[\nabla\log\pi]
    = \nabla \mathrm{KL}(\pi_{ref} \| \pi)`, the *forward*-KL gradient, not the reverse KL
    its value estimates. Use :func:`k3_k2grad` for the reverse-KL gradient with k3's value.

    Args:
        logprobs: (...) log-probs of the sampled tokens under the model.
        ref_logprobs: (...) their log-probs under the reference.

    Returns:
        Tensor of the same shape.

    Example:
        >>> import torch
        >>> pi, ref = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])  # each token once, weighted by pi
        >>> values = k3(pi.log(), ref.log())
        >>> [round(v, 4) for v in values.tolist()]  # ref/pi - 1 - log(ref/pi) >= 0
        [0.0721, 0.3069]
        >>> round(float((pi * values).sum()), 4)  # unbiased: KL(pi || ref) = 0.75 log 1.5 + 0.25 log 0.5
        0.1308
    """
    return _k3_from_log_ratio(_log_ratio(logprobs, ref_logprobs))


def k3_k2grad(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""Value of k3, gradient of k2: ``0.5 r^2 - sg(0.5 r^2) + sg(k3)``.

    Value: k3's (unbiased for :math:`\mathrm{KL}(\pi \| \pi_{ref})`, >= 0), for logging.

    Used as a loss: k2's gradient, the unbiased reverse-KL gradient
    :math:`\nabla \mathrm{KL}(\pi \| \pi_{ref})`.

    Args:
        logprobs: (...) log-probs of the sampled tokens under the model.
        ref_logprobs: (...) their log-probs under the reference.

    Returns:
        Tensor of the same shape.

    Example:
        >>> import torch
        >>> from divreg.estimators import k3
        >>> pi, ref = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])
        >>> logprobs = pi.log().requires_grad_()
        >>> values = k3_k2grad(logprobs, ref.log())
        >>> bool(torch.equal(values, k3(pi.log(), ref.log())))  # k3's values
        True
        >>> values.sum().backward()
        >>> [round(v, 4) for v in logprobs.grad.tolist()]  # k2's gradient, r = log(pi / ref)
        [0.4055, -0.6931]
    """
    r = _log_ratio(logprobs, ref_logprobs)
    half_square = 0.5 * r.square()
    return half_square - half_square.detach() + _k3_from_log_ratio(r).detach()
