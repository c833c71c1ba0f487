"""GRPO's group-relative advantages (Shao et al. 2024, arXiv 2402.03300; Dr. GRPO, Liu et al.
2025, arXiv 2503.20783, for ``scale="none"``)."""

from __future__ import annotations

import torch
from torch import Tensor

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    r"""GRPO's group-relative advantages: each completion's reward minus the mean of its group
    (the ``group_size`` completions of one prompt, contiguous in ``rewards``), then

    - ``scale="group"``: divided by the group's standard deviation + ``eps`` (GRPO);
    - ``scale="batch"``: divided by the standard deviation of the whole batch + ``eps``;
    - ``scale="none"``: not divided (Dr. GRPO, which argues the std division biases the
      update toward too easy and too hard questions).

    Standard deviations are unbiased (``torch.std``, as TRL); ``eps = 1e-4`` as TRL (verl uses
    1e-6). With ``"batch"`` the baseline is still the group mean (as TRL). A group whose rewards
    are all equal gets advantage 0.

    Args:
        rewards: (num_prompts * group_size,) rewards, groups contiguous.
        group_size: completions per prompt, G.
        scale: "group", "batch" or "none".
        eps: added to the standard deviation.

    Returns:
        Advantages, same shape and dtype as ``rewards``.

    Example:
        >>> import torch
        >>> rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
        >>> # group 1: mean 1/2, unbiased std sqrt(1/3) (the population std, 1/2, would give +-1):
        >>> # +-0.5 / (0.5774 + 1e-4); group 2 is all equal: 0
        >>> [round(v, 4) for v in group_advantages(rewards, 4).tolist()]
        [0.8659, -0.8659, -0.8659, 0.8659, 0.0, 0.0, 0.0, 0.0]
        >>> group_advantages(rewards, 4, scale="none").tolist()[:4]  # Dr. GRPO: reward minus the group mean
        [0.5, -0.5, -0.5, 0.5]
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {list(ADVANTAGE_SCALES)}, got {scale!r}")
    if rewards.dim() != 1 or rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a non-empty 1-D tensor whose length is a multiple of group_size="
                         f"{group_size}, got shape {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf")
    if group_size < 2 and scale == "group":
        raise ValueError("group_size=1 has no group standard deviation (it is NaN); use group_size >= 2, or "
                         "scale='batch' or 'none'")
    grouped = rewards.view(-1, group_size)
    advantages = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale == "group":
        advantages = advantages / (grouped.std(1).repeat_interleave(group_size) + eps)
    elif scale == "batch":
        if rewards.numel() < 2:
            raise ValueError("scale='batch' needs at least 2 completions in the batch")
        advantages = advantages / (rewards.std() + eps)
    return advantages
