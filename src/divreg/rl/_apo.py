"""APO's two shaping terms for GRPO: Difficulty-Adaptive Divergence Shaping (a KL weight per
completion) and Suboptimal Trajectory Complexity Regularization (a longer wrong answer's
advantage scaled up).

References:
    Hong et al. "APO: Enhancing Reasoning Ability of MLLMs via Asymmetric Policy Optimization",
    2025, arXiv 2506.21655; official code github.com/Indolent-Kawhi/View-R1 (an OpenRLHF fork:
    ``openrlhf/trainer/ray/ppo_actor.py`` ``calculate_kl_weight`` and the KL loss,
    ``openrlhf/trainer/ppo_utils/experience_maker.py`` difficulty and STCR). The equations follow
    that code (the paper's body was not available to us).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _groups(values: Tensor, group_size: int, name: str) -> Tensor:
    if values.dim() != 1 or group_size < 1 or values.numel() % group_size:
        raise ValueError(f"{name} must be 1-D with a length that is a multiple of group_size={group_size}, "
                         f"got shape {tuple(values.shape)}")
    return values.view(-1, group_size)


def group_difficulty(correct: Tensor, group_size: int) -> Tensor:
    r"""APO's difficulty of each completion's prompt: :math:`d = 1 - \#\text{correct} / G`, the
    same for every completion of a group. ``correct`` (N,) is 0/1 (bool or numbers), groups
    contiguous. Returns (N,) in [0, 1].

    Example:
        >>> import torch
        >>> correct = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1])  # two prompts, 4 completions each
        >>> group_difficulty(correct, 4).tolist()  # 1 - 1/4 and 1 - 4/4
        [0.75, 0.75, 0.75, 0.75, 0.0, 0.0, 0.0, 0.0]
    """
    correct = _groups(correct.double(), group_size, "correct")
    if bool(((correct != 0) & (correct != 1)).any()):
        raise ValueError("correct must hold 0/1 values (is each completion's answer right)")
    return (1.0 - correct.mean(-1, keepdim=True)).expand_as(correct).reshape(-1)


def dads_kl_weights(correct: Tensor, advantages: Tensor, group_size: int, *, scale: float = math.e) -> Tensor:
    r"""Difficulty-Adaptive Divergence Shaping: the weight of each completion's KL term.

    .. math:: w = 1 - \exp(-s\,(1 - d)) \quad\text{if } A > 0 \text{ and } 0 < d < 1,
              \qquad w = 1 \text{ otherwise},

    with :math:`d` the group's difficulty (:func:`group_difficulty`) and :math:`s` = ``scale``
    (Euler's number in the official code, ``math.exp(1)``). A completion that did better than
    its group on a hard prompt (large d) gets a small weight: the KL pulls it back less. As in the
    official code the gate is the sign of the advantage (not correctness), and d = 0 or 1 gives
    w = 1 (a jump: the formula tends to 1 - e^-s and to 0 there). With G = 8: w = 0.907 at d = 1/8,
    0.288 at d = 7/8. Use: ``loss = PG + c * mean_i(w_i * token_mean(k3_i))`` with c = 1e-3 in the
    paper's script (``kl_weights=`` of :class:`~divreg.losses.GRPOLoss`).

    Args:
        correct: (N,) 0/1, groups of ``group_size`` contiguous.
        advantages: (N,) each completion's advantage.
        group_size: G.
        scale: s > 0.

    Returns:
        (N,) float64 weights in (0, 1].

    Example:
        >>> import torch
        >>> correct = torch.tensor([1, 0, 0, 0])  # one right answer in 4: d = 3/4
        >>> advantages = torch.tensor([1.5, -0.5, -0.5, -0.5])
        >>> # the completion above its group: 1 - exp(-e (1 - 3/4)); the others keep weight 1
        >>> [round(v, 4) for v in dads_kl_weights(correct, advantages, 4).tolist()]
        [0.4932, 1.0, 1.0, 1.0]
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    difficulty = group_difficulty(correct, group_size)
    if advantages.shape != difficulty.shape:
        raise ValueError(f"advantages must have shape {tuple(difficulty.shape)}, got {tuple(advantages.shape)}")
    shaped = 1.0 - torch.exp(-scale * (1.0 - difficulty))
    use = (advantages.to(difficulty) > 0) & (difficulty > 0) & (difficulty < 1)
    return torch.where(use, shaped, torch.ones_like(shaped))


def stcr_advantages(advantages: Tensor, lengths: Tensor, correct: Tensor, group_size: int, *,
                    base: float = 1.00001) -> Tensor:
    r"""Suboptimal Trajectory Complexity Regularization: in a group with at least one correct
    answer, a wrong answer longer than the correct ones' mean length :math:`\mu^+` gets

    .. math:: \Delta = L - \mu^+,\qquad p = 1 - b^{-\Delta},\qquad A \leftarrow A\,(1 + p),

    every other completion keeps its advantage. ``lengths`` are completion lengths in tokens (EOS
    included, as the official code's ``action_mask.sum``); b = ``base`` (1.00001 in the official
    code, so p is at most 0.04 at 4096 tokens: a gentle push against long wrong answers). Applied
    after the group normalization, so a group's advantages no longer sum to 0. As in the official
    code the factor multiplies the advantage whatever its sign: a wrong answer with a positive
    advantage (possible when another reward, e.g. the format's, lifts it) is pushed *up* more.

    Returns:
        (N,) the shaped advantages (float64).

    Example:
        >>> import torch
        >>> advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
        >>> lengths, correct = torch.tensor([10, 20, 25, 5]), torch.tensor([1, 1, 0, 0])  # mu+ = 15
        >>> # the 25-token wrong answer: Delta = 10, p = 1 - 1.1^-10; the 5-token one is shorter: kept
        >>> [round(v, 4) for v in stcr_advantages(advantages, lengths, correct, 4, base=1.1).tolist()]
        [1.0, 1.0, -1.6145, -1.0]
    """
    if not (isinstance(base, (int, float)) and math.isfinite(base) and base > 1):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    right = _groups(correct.double(), group_size, "correct")
    if bool(((right != 0) & (right != 1)).any()):
        raise ValueError("correct must hold 0/1 values (is each completion's answer right)")
    length = _groups(lengths.double(), group_size, "lengths")
    advantage = _groups(advantages.double(), group_size, "advantages")
    if length.shape != right.shape or advantage.shape != right.shape:
        raise ValueError("advantages, lengths and correct must have the same shape")
    n_right = right.sum(-1, keepdim=True)
    mean_right = (length * right).sum(-1, keepdim=True) / n_right.clamp(min=1)  # mu+
    excess = (length - mean_right) * (1 - right) * (n_right > 0)  # Delta for wrong answers in groups with a right one
    p = torch.where(excess > 0, 1.0 - base ** (-excess), torch.zeros_like(excess))
    return (advantage * (1.0 + p)).reshape(-1)
