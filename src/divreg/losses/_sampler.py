r"""The sampler/trainer mismatch: completions sampled by an inference engine (vLLM) whose
log-probs differ from the trainer's for the same weights (other kernels, precision, a stale weight
version), and its correction by importance weights on the policy-gradient term.

With :math:`\rho_t = \pi_{train}(y_t) / \pi_{sampler}(y_t)`, the trainer's log-prob at sampling
time (``old_logprobs``, detached) over the sampler's:

- ``"tis"``, truncated importance sampling: :math:`w_t = \min(\rho_t, C)`;
- ``"mis"``, masked importance sampling: :math:`w_t = \rho_t\,\mathbb{1}[c \le \rho_t \le C]`
  (a token whose ratio leaves the range contributes nothing to the policy gradient);
- ``"none"``: :math:`w_t = 1` (the sampler's tokens taken as the trainer's).

:math:`w_t` (detached) multiplies each token's clipped surrogate; the KL term is not weighted, and
a masked token stays in the loss's normaliser (as TRL does). :math:`E_{y \sim \pi_{sampler}}[w\,A
\nabla\log\pi]` is then the on-policy gradient for ``tis`` when no ratio exceeds C, and a biased
but bounded-variance one otherwise (tested by exact enumeration).

References:
    Yao, Liu, Zhang, Shen, Gao. "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training", 2025 (blog, fengyao.notion.site/off-policy-rl; no arXiv id): token-level TIS with
    :math:`C = 2` in its verl recipe (verl PR #2953, ``tis_imp_ratio_cap``), applied after the
    PPO clip, the KL unweighted.
    Liu, Li, Fu, Wang, Liu, Shen. "When Speed Kills Stability: Demystifying RL Collapse from the
    Training-Inference Mismatch", 2025 (blog): masked IS, rejecting ratios above C.
    TRL ``GRPOConfig.vllm_importance_sampling_*`` (modes ``token_truncate`` / ``token_mask``,
    ``clip_max`` 3.0 by default since v0.26, ``clip_min`` since v1.6: IcePop, arXiv 2510.18855,
    uses [0.5, 5]); verl ``rollout_corr_helper.py`` (``rollout_is_threshold`` 2.0).
    Departures: the level is per token (TRL's default is per sequence, ``sequence_mask``); the
    default cap is 2.0 (Yao et al., verl) where TRL's is 3.0; ``mis`` has no lower bound unless
    ``floor`` is set (Liu et al.; verl's older mask mode and IcePop are two-sided).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

SAMPLER_CORRECTIONS = ("none", "tis", "mis")


def check_sampler_correction(correction: str, cap: float, floor: Optional[float]) -> None:
    """One line for a bad choice, cap or floor."""
    if correction not in SAMPLER_CORRECTIONS:
        raise ValueError(f"sampler_correction must be one of {list(SAMPLER_CORRECTIONS)}, got {correction!r}")
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0 or cap == float("inf"):
        raise ValueError(f"sampler_cap must be a finite number > 0 (the largest ratio kept), got {cap!r}")
    if floor is not None and not (0 <= floor < cap):
        raise ValueError(f"sampler_floor must be in [0, sampler_cap={cap}), got {floor!r}")
    if floor is not None and correction != "mis":
        raise ValueError("sampler_floor is the lower bound of masked importance sampling: set it with "
                         "sampler_correction='mis' only")


def sampler_weights(trainer_logprobs: Tensor, sampler_logprobs: Tensor, correction: str = "tis", cap: float = 2.0,
                    floor: Optional[float] = None) -> Tensor:
    r"""The detached per-token weights :math:`w_t` of the module docstring, same shape as the inputs.

    Example:
        >>> import math, torch
        >>> trainer, sampler = torch.log(torch.tensor([0.5, 0.4, 0.1])), torch.log(torch.tensor([0.1, 0.4, 0.5]))
        >>> [round(w, 4) for w in sampler_weights(trainer, sampler, "tis", cap=2.0).tolist()]  # ratios 5, 1, 0.2
        [2.0, 1.0, 0.2]
        >>> [round(w, 4) for w in sampler_weights(trainer, sampler, "mis", cap=2.0).tolist()]
        [0.0, 1.0, 0.2]
    """
    check_sampler_correction(correction, cap, floor)
    if trainer_logprobs.shape != sampler_logprobs.shape:
        raise ValueError(f"trainer and sampler log-probs must have one shape, got {tuple(trainer_logprobs.shape)} and "
                         f"{tuple(sampler_logprobs.shape)}")
    if correction == "none":
        return torch.ones_like(trainer_logprobs).detach()
    # the log-ratio clamped to +-20 before the exp (as verl does), so an extreme token cannot overflow
    ratio = (trainer_logprobs.detach() - sampler_logprobs.detach().to(trainer_logprobs.dtype)).clamp(-20, 20).exp()
    if correction == "tis":
        return ratio.clamp(max=cap)
    keep = ratio <= cap if floor is None else (ratio >= floor) & (ratio <= cap)
    return torch.where(keep, ratio, torch.zeros_like(ratio))


def sampler_mismatch(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    r"""How far the sampler is from the trainer on the sampled tokens (``mask`` True): the mean
    log-ratio :math:`\log\pi_{train} - \log\pi_{sampler}`, its mean k3 (an estimate of
    KL(sampler || trainer), >= 0), and the largest ratio.

    Example:
        >>> import torch
        >>> same = torch.log(torch.tensor([[0.5, 0.25]]))
        >>> sampler_mismatch(same, same, torch.tensor([[True, True]]))
        {'mismatch_log_ratio': 0.0, 'mismatch_k3': 0.0, 'mismatch_max_ratio': 1.0}
    """
    log_ratio = (trainer_logprobs.detach() - sampler_logprobs.detach().to(trainer_logprobs.dtype))[mask].double()
    if log_ratio.numel() == 0:
        return {"mismatch_log_ratio": 0.0, "mismatch_k3": 0.0, "mismatch_max_ratio": 1.0}
    k3 = log_ratio.exp() - 1 - log_ratio
    return {"mismatch_log_ratio": float(log_ratio.mean()), "mismatch_k3": float(k3.mean()),
            "mismatch_max_ratio": float(log_ratio.max().exp())}
