"""Lp-Reg: keep the policy's low-probability but plausible tokens alive by pulling them toward a
min-p proxy of the old policy, only where the policy gradient pushes them down.

References:
    Huang et al. "Low-probability Tokens Sustain Exploration in Reinforcement Learning with
    Verifiable Reward", 2025, arXiv 2510.03222; official code github.com/CarlanLark/Lp-Reg
    (the reproducible version is CarlanLark/Lp-Reg-dev, on verl:
    ``verl/workers/actor/dp_actor.py`` ``apply_min_p``, ``verl/trainer/ppo/core_algos.py``
    ``compute_policy_loss_lp_reg`` and ``kl_penalty(..., "low_var_kl")``). Script defaults:
    kappa = 0.02, rho = 0.01 (14B; 0.005 for 32B), beta = 1, token-mean aggregation.

Departures: the official code picks the lowest-probability fraction per micro-batch on each GPU,
with the current policy's (detached) log-probs; :func:`lp_reg_token_mask` picks it over the
batch it is given, once per generated batch, from the sampling policy's log-probs (the same
numbers with one update per batch, ``num_iterations=1`` as in the on-policy scripts), so the
selection does not depend on how the batch is split into micro-batches (``divreg rl`` calls it
on each process's share, so it does depend on the number of processes, as the official code's
per-GPU choice does). With ``num_iterations > 1`` the selection and the proxy stay those of the
sampling policy for every update (the official ``minp_old_log_prob=True``). A filtered token's
proxy log-prob is ``-inf`` (the code uses logits of -1e4: the same selection).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..divergences.kernels import check_temperature, log_softmax_checked, math_dtype


def min_p_proxy_logprobs(logits: Tensor, token_ids: Tensor, *, kappa: float = 0.02, temperature: float = 1.0,
                         ignore_index: int = -100) -> Tensor:
    r"""Log-probs of ``token_ids`` under the min-p proxy of ``softmax(logits / T)``:

    .. math:: \pi_{proxy}(a) = \frac{\pi(a)\,\mathbb 1[\pi(a) \ge \kappa \max_b \pi(b)]}
              {\sum_b \pi(b)\,\mathbb 1[\pi(b) \ge \kappa \max_{b'} \pi(b')]}

    per position (``-inf`` for a filtered token, 0 at ignored positions). The official code
    filters on the untempered probabilities, then applies the temperature (1 in its scripts);
    here both use ``temperature``.

    Args:
        logits: (..., V) of the policy that sampled the tokens (the old policy).
        token_ids: (...) sampled ids, or ``ignore_index``.
        kappa: the min-p threshold in [0, 1] (0.02 in the scripts).

    Example:
        >>> import torch
        >>> logits = torch.tensor([0.6, 0.3, 0.1]).log().expand(3, 3)  # one distribution at 3 positions
        >>> proxy = min_p_proxy_logprobs(logits, torch.tensor([0, 1, 2]), kappa=0.2)  # keeps p >= 0.2 * 0.6
        >>> [round(v, 4) for v in proxy.exp().tolist()]  # 0.6 / 0.9 and 0.3 / 0.9; 0.1 is filtered out
        [0.6667, 0.3333, 0.0]
    """
    check_temperature(temperature)
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 <= kappa <= 1:
        raise ValueError(f"kappa must be a number in [0, 1], got {kappa!r}")
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(f"token_ids must have shape {tuple(logits.shape[:-1])}, got {tuple(token_ids.shape)}")
    valid = token_ids != ignore_index
    log_probs = log_softmax_checked("logits", logits[valid], temperature, math_dtype(logits))  # (n, V)
    kept = log_probs >= math.log(kappa) + log_probs.max(-1, keepdim=True).values if kappa > 0 else \
        torch.ones_like(log_probs, dtype=torch.bool)
    log_z = torch.logsumexp(torch.where(kept, log_probs, -math.inf), -1)  # (n,)
    ids = token_ids[valid].long().unsqueeze(-1)
    picked = log_probs.gather(-1, ids).squeeze(-1) - log_z
    picked = torch.where(kept.gather(-1, ids).squeeze(-1), picked, -math.inf)
    return torch.zeros(token_ids.shape, dtype=picked.dtype, device=logits.device).masked_scatter(valid, picked)


def lp_reg_token_mask(logprobs: Tensor, proxy_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                      rho: float = 0.01) -> Tensor:
    r"""The tokens Lp-Reg regularizes: among the completion tokens of negative-advantage
    completions (n of them), the :math:`k = \max(1, \lfloor \rho n \rfloor)` with the lowest
    log-prob, *only when k > 1* (as the official code), and of those the ones whose probability is
    below the proxy's (a min-p-filtered token, proxy ``-inf``, never is).

    Args:
        logprobs: (B, T) log-probs of the sampled tokens (the sampling policy's).
        proxy_logprobs: (B, T) from :func:`min_p_proxy_logprobs`.
        advantages: (B,) per completion.
        mask: (B, T) bool, completion tokens.
        rho: the fraction in (0, 1].

    Returns:
        (B, T) bool.

    Example:
        >>> import torch
        >>> logprobs = torch.tensor([[0.5, 0.01], [0.05, 0.6]]).log()
        >>> proxy = torch.tensor([[0.6, 0.02], [0.0, 0.7]]).log()  # 0.0: filtered by min-p
        >>> mask = torch.ones(2, 2, dtype=torch.bool)
        >>> # both completions negative: n = 4, the k = 0.5 * 4 = 2 lowest (0.01, 0.05); only 0.01 is below its proxy
        >>> lp_reg_token_mask(logprobs, proxy, torch.tensor([-1.0, -1.0]), mask, rho=0.5).tolist()
        [[False, True], [False, False]]
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise ValueError(f"rho must be a number in (0, 1], got {rho!r}")
    if proxy_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape or advantages.shape != logprobs.shape[:1]:
        raise ValueError("logprobs, proxy_logprobs and mask must be (B, T) and advantages (B,)")
    candidates = mask & (advantages < 0).unsqueeze(-1)
    n = int(candidates.sum())
    k = max(1, int(math.floor(rho * n)))
    selected = torch.zeros_like(mask)
    if k <= 1:
        return selected
    flat = torch.where(candidates, logprobs.detach(), math.inf).reshape(-1)
    lowest = torch.topk(flat, k, largest=False).indices
    selected.view(-1)[lowest] = True
    return selected & (logprobs.detach() < proxy_logprobs)
