"""Lp-Reg's loss term (Huang et al. 2025, arXiv 2510.03222; official code
CarlanLark/Lp-Reg-dev): at the tokens :func:`divreg.rl.lp_reg_token_mask` selects, the clipped
surrogate is replaced by the unclipped one plus a clamped k3 penalty toward the min-p proxy
(:func:`divreg.rl.min_p_proxy_logprobs`). The selection and the proxy shape a rollout and live in
:mod:`divreg.rl`; the penalty scores it and lives here."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class LpReg(NamedTuple):
    """What :class:`~divreg.losses.GRPOLoss` needs for Lp-Reg on a micro-batch."""

    selected: Tensor  # (B, T) bool: the regularized tokens (divreg.rl.lp_reg_token_mask)
    proxy_logprobs: Tensor  # (B, T) log-probs of the sampled tokens under the min-p proxy
    coef: float = 1.0  # beta
    clamp: float = 10.0  # the penalty's clamp


def lp_reg_penalty(logprobs: Tensor, proxy_logprobs: Tensor, clamp: float = 10.0) -> Tensor:
    r"""The per-token penalty :math:`\min(k3, c)` with :math:`u = \log\pi_{proxy} - \log\pi`,
    :math:`k3 = e^u - u - 1` (verl's ``low_var_kl``; its expectation under :math:`\pi` is
    KL(pi || proxy)). Its gradient with respect to :math:`\log\pi` is
    :math:`-(\pi_{proxy}/\pi - 1)`: negative where the policy is below the proxy, so the loss
    pushes the token *up*; once the value reaches the clamp (:math:`\pi_{proxy}/\pi \gtrsim 13.6` at
    c = 10) the gradient is 0, as in the official code. ``-inf`` proxy entries give 0.

    Example:
        >>> import torch
        >>> logprobs = torch.tensor([0.1, 0.3, 0.1, 0.001]).log()
        >>> proxy = torch.tensor([0.2, 0.3, 0.0, 0.1]).log()  # 0.0: a token the min-p filter removed
        >>> # u = log 2: 2 - log 2 - 1; equal: 0; filtered: 0; u = log 100: 99 - log 100, clamped to 10
        >>> [round(v, 4) for v in lp_reg_penalty(logprobs, proxy).tolist()]
        [0.3069, 0.0, 0.0, 10.0]
    """
    raw = proxy_logprobs - logprobs
    finite = torch.isfinite(raw)
    u = torch.where(finite, raw, 0.0).clamp(max=60.0)  # no inf reaches the arithmetic (or its backward)
    return torch.where(finite, torch.expm1(u) - u, 0.0).clamp(max=clamp)
