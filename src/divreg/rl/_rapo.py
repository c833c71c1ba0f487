"""RAPO's reweighted reference: the target of a *forward* KL that replaces GRPO's reverse KL.

References:
    Deng et al. "Unlocking Reasoning Capabilities in LLMs via Reinforcement Learning
    Exploration" (RAPO), 2025, arXiv 2510.03865 (no official code found). What we could read
    (the abstract and summaries) gives the forward KL(ref_hat || pi) to a reweighted reference
    ref_hat proportional to ref^phi(r), phi increasing in the reward with values in [0, 1], and an
    entropy bonus; the exact phi, the coefficients and whether ref_hat is normalized per position
    or per sequence were not available. Here ref_hat is normalized **per position** (a
    per-sequence normalizer is intractable over all sequences) and phi is an option of the
    recipe with a documented default (``phi(r) = clip(r / r_max, 0, 1)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..divergences.kernels import check_temperature, log_softmax_checked, math_dtype


def reweighted_reference_logits(ref_logits: Tensor, phi: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""Logits of :math:`\hat\pi_{ref}(\cdot \mid s_t) \propto \pi_{ref}(\cdot \mid s_t)^{\phi}` at
    every position, :math:`\phi` one per sequence:

    .. math:: \log\hat\pi_{ref}(v \mid s_t) = \phi\,\log\pi_{ref}(v \mid s_t)
              - \log\textstyle\sum_{v'} \pi_{ref}(v' \mid s_t)^{\phi}

    (returned unnormalized: :math:`\phi \log\pi_{ref}`; every divergence normalizes its logits).
    :math:`\phi = 1` is the reference itself, :math:`\phi = 0` the uniform distribution,
    in between a flatter reference: a low-reward completion is pulled toward exploring more
    tokens, a high-reward one toward the reference. Use as the target of
    ``divreg.divergences.forward_kl(policy_logits, target)`` (the exact forward KL per position,
    whose gradient is that of KL(ref_hat || pi)), or its log-probs at the sampled tokens in the
    k3-as-loss estimator (whose gradient is also the forward KL's; see
    :func:`divreg.losses.kl_per_token`).

    Args:
        ref_logits: (B, T, V) the reference's logits.
        phi: (B,) in [0, 1].
        temperature: divides the reference's logits first.

    Example:
        >>> import torch
        >>> ref_logits = torch.tensor([0.8, 0.2]).log().expand(3, 1, 2)  # 3 sequences of one position
        >>> out = reweighted_reference_logits(ref_logits, torch.tensor([1.0, 0.5, 0.0]))
        >>> # phi = 1: the reference; 1/2: sqrt(0.8) : sqrt(0.2) = 2 : 1; 0: uniform
        >>> [[round(v, 4) for v in row] for row in out.softmax(-1)[:, 0].tolist()]
        [[0.8, 0.2], [0.6667, 0.3333], [0.5, 0.5]]
    """
    check_temperature(temperature)
    if ref_logits.dim() != 3 or phi.shape != ref_logits.shape[:1]:
        raise ValueError(f"ref_logits must be (B, T, V) and phi (B,), got {tuple(ref_logits.shape)} and "
                         f"{tuple(phi.shape)}")
    if not bool(((phi >= 0) & (phi <= 1)).all()):
        raise ValueError(f"phi must be in [0, 1] (0: uniform, 1: the reference), got {phi.tolist()}")
    log_ref = log_softmax_checked("ref_logits", ref_logits, temperature, math_dtype(ref_logits))
    # phi = 0 with a banned token (-inf): 0 * -inf would be NaN; a banned token stays banned instead
    return torch.where(torch.isinf(log_ref), log_ref, phi.to(log_ref.dtype)[:, None, None] * log_ref)
