r"""Pairwise preference losses (the DPO family) on per-sequence log-probs of the policy and the
reference, with the reverse-KL log-ratio optionally replaced by the link of another f-divergence.

With :math:`\ell_w = \log\pi(y_w|x) - \log\pi_{ref}(y_w|x)` and :math:`\ell_l` likewise for the
rejected answer, the implicit reward of an answer is :math:`\beta f'(e^{\ell})` and the margin is
:math:`h = \beta\,[f'(e^{\ell_w}) - f'(e^{\ell_l})]`; :math:`f'(u) = \log u + 1` (reverse KL) gives
DPO's :math:`h = \beta(\ell_w - \ell_l)`.

References:
    Rafailov et al. "Direct Preference Optimization", 2023, arXiv 2305.18290 (``sigmoid``).
    Mitchell, "A note on DPO with noisy preferences", 2023 (conservative DPO: ``label_smoothing``).
    Chowdhury et al. "Provably Robust DPO", 2024, arXiv 2403.00409 (``robust``).
    Azar et al. "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    2023, arXiv 2310.12036 (``ipo``, eq. 17, with per-token-normalized log-ratios as TRL).
    Zhao et al. "SLiC-HF", 2023, arXiv 2305.10425 (``hinge``).
    Wang et al. "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
    Divergence Constraints", 2023, arXiv 2309.16240 (f-divergence links).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

PREFERENCE_LOSSES = ("sigmoid", "robust", "hinge", "ipo", "sigmoid_norm")
PREFERENCE_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


class PreferenceOutput(NamedTuple):
    """Per-pair values (each (B,)); ``loss`` carries the gradient."""

    loss: Tensor
    chosen_rewards: Tensor  # beta * f'(pi / ref) of the chosen answer (detached)
    rejected_rewards: Tensor
    margins: Tensor  # chosen_rewards - rejected_rewards
    reward_accuracy: Tensor  # 1 where the chosen answer's implicit reward is the larger


def f_divergence_link(logratios: Tensor, divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    r""":math:`f'(u)` at :math:`u = \pi/\pi_{ref} = e^{\ell}`, up to an additive constant (which
    cancels in the margin), for the generator :math:`f` of each divergence :math:`D_f(\pi\|\pi_{ref})
    = E_{\pi_{ref}}[f(\pi/\pi_{ref})]`:

    - ``reverse_kl`` (:math:`f(u) = u\log u`, DPO): :math:`\ell`;
    - ``forward_kl`` (:math:`f(u) = -\log u`): :math:`1 - e^{-\ell}` (:math:`-1/u` plus 1);
    - ``js`` (:math:`f(u) = u\log u - (1+u)\log\frac{1+u}{2}`): :math:`\log\frac{2u}{1+u}
      = \log 2 + \log\sigma(\ell)`;
    - ``alpha`` (:math:`f(u) = \frac{u^{1-\alpha} - (1-\alpha)u - \alpha}{\alpha(\alpha-1)}`, Amari's
      convention as in ``divreg.divergences.alpha_divergence``: alpha -> 0 is the reverse KL and
      alpha -> 1 the forward KL): :math:`\frac{1 - u^{-\alpha}}{\alpha}`, computed stably; the
      limit alpha -> 0 is :math:`\ell`. (TRL's ``f_alpha_divergence_coef`` is 1 - alpha.)
    """
    if divergence == "reverse_kl":
        return logratios
    if divergence == "forward_kl":
        return -torch.expm1(-logratios)
    if divergence == "js":
        return math.log(2.0) + F.logsigmoid(logratios)
    if divergence == "alpha":
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1] (0: reverse KL, 1: forward KL), got {alpha!r}")
        if alpha == 0:
            return logratios
        return -torch.expm1(-alpha * logratios) / alpha
    raise ValueError(f"divergence must be one of {PREFERENCE_DIVERGENCES}, got {divergence!r}")


def preference_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Optional[Tensor],
                    ref_rejected: Optional[Tensor], *, loss: str = "sigmoid", beta: float = 0.1,
                    label_smoothing: float = 0.0, divergence: str = "reverse_kl", alpha: float = 0.5,
                    chosen_tokens: Optional[Tensor] = None, rejected_tokens: Optional[Tensor] = None
                    ) -> PreferenceOutput:
    r"""One of the DPO-family losses per pair, with :math:`h` the margin of the module docstring:

    - ``sigmoid`` (DPO): :math:`-\log\sigma(h)`; with ``label_smoothing`` :math:`\epsilon`,
      conservative DPO :math:`-(1-\epsilon)\log\sigma(h) - \epsilon\log\sigma(-h)` (each label
      flipped with probability :math:`\epsilon`);
    - ``robust`` (rDPO): :math:`\frac{-(1-\epsilon)\log\sigma(h) + \epsilon\log\sigma(-h)}{1-2\epsilon}`,
      an unbiased loss under label flips with rate :math:`\epsilon < 1/2`;
    - ``hinge`` (SLiC): :math:`\max(0, 1 - h)`;
    - ``ipo``: :math:`(h_{tok}/\beta - 1/(2\beta))^2`, where :math:`h_{tok}` uses the log-ratios
      divided by each answer's number of tokens (as TRL, confirmed with the IPO authors there);
    - ``sigmoid_norm``: DPO on per-token-normalized log-ratios.

    ``ipo`` and ``sigmoid_norm`` need ``chosen_tokens`` and ``rejected_tokens`` (B,). A reference of
    None means 0 (reference-free). Inputs are (B,) sequence log-probs (sums over the answer tokens).
    """
    if loss not in PREFERENCE_LOSSES:
        raise ValueError(f"loss must be one of {PREFERENCE_LOSSES}, got {loss!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    limit = 0.5 if loss == "robust" else 1.0
    if isinstance(label_smoothing, bool) or not 0 <= label_smoothing < limit:
        raise ValueError(f"label_smoothing must be in [0, {limit}) for loss={loss!r}, got {label_smoothing!r}")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected) if t is not None}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"the log-probs must all be (B,) tensors of one shape, got {sorted(map(tuple, shapes))}")
    chosen = policy_chosen - (0 if ref_chosen is None else ref_chosen)
    rejected = policy_rejected - (0 if ref_rejected is None else ref_rejected)
    if loss in ("ipo", "sigmoid_norm"):
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError(f"loss={loss!r} normalizes by the answers' lengths: pass chosen_tokens and rejected_tokens")
        if bool((chosen_tokens < 1).any() or (rejected_tokens < 1).any()):
            raise ValueError("every answer needs at least one token (chosen_tokens, rejected_tokens >= 1)")
        chosen, rejected = chosen / chosen_tokens, rejected / rejected_tokens
    chosen_score = f_divergence_link(chosen, divergence, alpha)
    rejected_score = f_divergence_link(rejected, divergence, alpha)
    h = beta * (chosen_score - rejected_score)
    eps = label_smoothing
    if loss in ("sigmoid", "sigmoid_norm"):
        values = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    elif loss == "robust":
        values = (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    elif loss == "hinge":
        values = torch.relu(1 - h)
    else:  # ipo
        values = (h / beta - 1 / (2 * beta)) ** 2
    chosen_reward, rejected_reward = (beta * chosen_score).detach(), (beta * rejected_score).detach()
    return PreferenceOutput(values, chosen_reward, rejected_reward, chosen_reward - rejected_reward,
                            (chosen_reward > rejected_reward).to(values.dtype))
