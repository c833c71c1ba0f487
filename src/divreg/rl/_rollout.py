"""A typed rollout (as torchtune's ``rlhf/_types.py`` ``Trajectory``): one generated batch of
completions and everything the shapers add to it, every field with its shape, instead of a dict
of string keys. ``B`` is the number of completions on this process, ``L`` the padded length of
prompt + completion, ``T = L - 1`` the next-token positions (position t predicts token t + 1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Rollout:
    """One generated RL batch, typed: the prompt + completion tokens and their masks, the rewards
    (task rewards before shaping, rewards after), exact-match correctness, and what shapers and
    the loss add to it (sampling and reference log-probs, advantages, per-completion KL weights,
    Lp-Reg's selected tokens and proxy log-probs, RAPO's exponent). Frozen: a shaper returns a new
    one with ``dataclasses.replace``."""
    input_ids: Tensor  # (B, L) prompt + completion + padding
    attention_mask: Tensor  # (B, L) 1 on prompt and completion tokens
    labels: Tensor  # (B, L) the completion's tokens, IGNORE_INDEX on prompt and padding
    rewards: Tensor  # (B,) float64, the rewards the advantages are computed from (after any reward shaping)
    task_rewards: Tensor  # (B,) float64, the combined task rewards before any shaping
    correct: Tensor  # (B,) float64, 1 where the completion is exactly right (APO, KDRL read it)
    logprobs: Optional[Tensor] = None  # (B, T) of the sampled tokens under the sampling policy, 0 off the mask
    ref_logprobs: Optional[Tensor] = None  # (B, T) under the KL's target (the reference, or RAPO's reweighting)
    advantages: Optional[Tensor] = None  # (B,)
    kl_weights: Optional[Tensor] = None  # (B,) a weight on each completion's KL term (APO's DADS, KDRL's mask)
    lp_selected: Optional[Tensor] = None  # (B, T) bool, Lp-Reg's regularized tokens
    proxy_logprobs: Optional[Tensor] = None  # (B, T) Lp-Reg's min-p proxy log-probs of the sampled tokens
    ref_phi: Optional[Tensor] = None  # (B,) RAPO's reweighting exponent of the reference, per completion
    sampler_logprobs: Optional[Tensor] = None  # (B, T) the sampler's own log-probs of the sampled tokens (vLLM), 0 off

    @property
    def mask(self) -> Tensor:
        """(B, T) bool: the completion positions (those whose next token is a completion token)."""
        return self.labels[:, 1:] != IGNORE_INDEX

    @property
    def targets(self) -> Tensor:
        """(B, T) the next tokens, IGNORE_INDEX off the completion."""
        return self.labels[:, 1:]

    @property
    def batch(self) -> dict:
        """The model's inputs (what :func:`divreg.models.next_token_signal` reads)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels}

    def replace(self, **changes) -> "Rollout":
        return dataclasses.replace(self, **changes)

    def to(self, device) -> "Rollout":
        return self.replace(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                               if isinstance(getattr(self, f.name), Tensor)})

    def micro_batches(self, count: int) -> list["Rollout"]:
        """``count`` interleaved slices (rows i, i + count, ...): the accumulation micro-batches."""
        if count < 1 or count > self.input_ids.shape[0]:
            raise ValueError(f"cannot split {self.input_ids.shape[0]} completions into {count} micro-batches")
        return [self.replace(**{f.name: getattr(self, f.name)[i::count] for f in dataclasses.fields(self)
                                if isinstance(getattr(self, f.name), Tensor)}) for i in range(count)]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def rollout_from_batch(batch: dict, rewards: Tensor, correct: Tensor) -> Rollout:
    """A :class:`Rollout` from a collated batch (``input_ids``, ``attention_mask``, ``labels``)
    and its rewards and exact-match flags.

    Example:
        >>> import torch
        >>> batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
        ...          "labels": torch.tensor([[-100, -100, 7, 8]])}  # a 2-token prompt, a 2-token completion
        >>> rollout = rollout_from_batch(batch, torch.tensor([1.0]), torch.tensor([1.0]))
        >>> rollout.mask.tolist()  # position t predicts token t + 1: positions 1 and 2
        [[False, True, True]]
        >>> rollout.rewards.dtype, rollout.advantages is None  # shapers fill in advantages later
        (torch.float64, True)
    """
    rewards = rewards.to(torch.float64)
    return Rollout(batch["input_ids"], batch["attention_mask"], batch["labels"], rewards, rewards,
                   torch.as_tensor(correct, dtype=torch.float64))
