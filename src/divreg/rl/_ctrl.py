"""InfAlign's calibrate-and-transform reward (CTRL): a reward made relative to the reference
policy's own samples for the same prompt, then transformed for the way the aligned model will be
used at inference (best-of-N, worst-of-N, or plain sampling).

References:
    Balashankar et al. "InfAlign: Inference-aware Language Model Alignment", 2024 (ICML 2025),
    arXiv 2412.19792 (no official code found). The calibration (the fraction of reference
    samples with a lower reward, ties counting one half) and the transforms exp(t C) and
    -exp(-t C) follow the description we were given; the paper's body was not available to us,
    so tie handling is an option (``ties``) with one half as the documented default.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CTRL_TRANSFORMS = ("identity", "best_of_n", "worst_of_n")
TIE_RULES = ("half", "lower", "higher")


def calibrated_rewards(rewards: Tensor, reference_rewards: Tensor, *, ties: str = "half") -> Tensor:
    r"""The calibrated reward :math:`C(x, y)`: the fraction of the reference policy's samples for
    the same prompt whose reward is below :math:`r(x, y)`.

    .. math:: C(x, y) = \frac{1}{M}\sum_{m=1}^{M}\Big(\mathbb 1[r_m < r(x, y)]
              + \tfrac12\,\mathbb 1[r_m = r(x, y)]\Big)

    (``ties="half"``; ``"lower"`` counts a tie as below, ``"higher"`` as above). Under the
    reference policy C is (nearly) uniform on [0, 1] whatever the reward's scale, which is what
    makes one transform fit every prompt.

    Args:
        rewards: (P, K) rewards of K completions of each of P prompts (or (P,) for one each).
        reference_rewards: (P, M) rewards of M reference samples of the same prompts.
        ties: how a reference sample with an equal reward counts.

    Returns:
        C, shaped like ``rewards`` (float64, in [0, 1]).

    Example:
        >>> import torch
        >>> reference = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # 4 reference samples of one prompt
        >>> calibrated_rewards(torch.tensor([2.0]), reference).tolist()  # 2 below, 1 tie: (2 + 1/2) / 4
        [0.625]
        >>> calibrated_rewards(torch.tensor([2.0]), reference, ties="lower").tolist()  # (2 + 1) / 4
        [0.75]
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    single = rewards.dim() == 1
    values = rewards.double().unsqueeze(-1) if single else rewards.double()
    reference = reference_rewards.double()
    if values.dim() != 2 or reference.dim() != 2 or reference.shape[0] != values.shape[0] or reference.shape[1] < 1:
        raise ValueError(f"rewards must be (P, K) or (P,) and reference_rewards (P, M) with M >= 1 for the same P "
                         f"prompts, got {tuple(rewards.shape)} and {tuple(reference_rewards.shape)}")
    if not bool(torch.isfinite(values).all() and torch.isfinite(reference).all()):
        raise ValueError("rewards and reference_rewards must be finite (no NaN or inf)")
    below = (reference.unsqueeze(1) < values.unsqueeze(-1)).double().sum(-1)  # (P, K)
    equal = (reference.unsqueeze(1) == values.unsqueeze(-1)).double().sum(-1)
    tie_weight = {"half": 0.5, "lower": 1.0, "higher": 0.0}[ties]
    calibrated = (below + tie_weight * equal) / reference.shape[1]
    return calibrated.squeeze(-1) if single else calibrated


def ctrl_transform(calibrated: Tensor, kind: str = "identity", t: float = 1.0) -> Tensor:
    r"""The transform of the calibrated reward for the inference procedure:
    ``best_of_n``: :math:`e^{tC}`; ``worst_of_n``: :math:`-e^{-tC}`; ``identity``: :math:`C`.
    Larger t weighs the top (bottom) of the reference's reward distribution more; the t that
    maximizes the best-of-N win rate at a given KL depends on N (see ``divreg.alignment``).

    Example:
        >>> import torch
        >>> calibrated = torch.tensor([0.0, 0.5, 1.0])
        >>> [round(v, 4) for v in ctrl_transform(calibrated, "best_of_n", t=2.0).tolist()]  # e^(2C)
        [1.0, 2.7183, 7.3891]
        >>> [round(v, 4) for v in ctrl_transform(calibrated, "worst_of_n", t=2.0).tolist()]  # -e^(-2C)
        [-1.0, -0.3679, -0.1353]
    """
    if kind not in CTRL_TRANSFORMS:
        raise ValueError(f"kind must be one of {CTRL_TRANSFORMS}, got {kind!r}")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"t must be a finite number > 0, got {t!r}")
    if kind == "best_of_n":
        return torch.exp(t * calibrated)
    if kind == "worst_of_n":
        return -torch.exp(-t * calibrated)
    return calibrated
