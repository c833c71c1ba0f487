"""Rewards: several reward functions combined per completion (TRL's ``reward_funcs`` with
``reward_weights``; ``None`` where a function does not apply)."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor


def combine_rewards(rewards_per_function: Sequence[Sequence[Optional[float]]], names: Sequence[str],
                    weights: Optional[Sequence[float]] = None) -> Tensor:
    r"""The weighted sum of several reward functions' rewards, per sample.

    A reward of ``None`` means "this function does not apply to this sample" (as in TRL): it is
    left out of that sample's sum (the other functions' weighted rewards still count). A sample
    for which every function returns ``None`` has no reward at all: a ``ValueError``, rather
    than TRL's warning and a reward of 0. NaN or inf, or a list of the wrong length, is a
    ``ValueError`` naming the function.

    Args:
        rewards_per_function: one list per function, one reward (or None) per sample.
        names: the functions' names (for errors).
        weights: one weight per function (default 1 each).

    Returns:
        (samples,) float64 rewards.

    Example:
        >>> combine_rewards([[1.0, 0.0], [None, 0.5]], ["exact", "format"], [1.0, 0.5]).tolist()
        [1.0, 0.25]
    """
    if len(rewards_per_function) != len(names) or not names:
        raise ValueError(f"got {len(rewards_per_function)} reward lists for {len(names)} reward functions {list(names)}")
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise ValueError(f"reward_weights has {len(weights)} entries for {len(names)} reward functions {list(names)}")
    samples = len(rewards_per_function[0])
    total = torch.zeros(samples, dtype=torch.float64)
    seen = torch.zeros(samples, dtype=torch.bool)
    for name, weight, rewards in zip(names, weights, rewards_per_function):
        if len(rewards) != samples:
            raise ValueError(f"reward function {name!r} returned {len(rewards)} rewards for {samples} completions")
        for index, reward in enumerate(rewards):
            if reward is None:
                continue
            if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
                raise ValueError(f"reward function {name!r} returned {reward!r} for completion {index}; rewards must "
                                 "be finite numbers (or None where the function does not apply)")
            total[index] += weight * float(reward)
            seen[index] = True
    if not bool(seen.all()):
        missing = seen.logical_not().nonzero().squeeze(-1).tolist()
        raise ValueError(f"every reward function returned None for completion(s) {missing[:5]}; at least one must "
                         "score each completion")
    return total
