"""Seeds and batch order: every random choice of a run is a function of the run's seed and
where the run is, through one derivation, so a resumed run replays exactly what it would have
done and every process agrees on what must be shared."""

from __future__ import annotations

import random

import torch
from torch import Tensor

_RADIX = 7919
_MODULUS = 2**63 - 1


def derive_seed(seed: int, *keys: int) -> int:
    """The seed of one random stream: ``seed`` followed by ``keys`` (epoch; step and process;
    ...) read as digits of a mixed-radix number, ``s <- s * 7919 + key``, modulo 2^63 - 1.

    Within one run (one ``seed`` and one number of keys) different keys give different seeds
    while every key but the first is below 7919 (process ranks, epochs; the first key, e.g. the
    step, is unbounded). A step past 7919 can meet the stream of another *seed*, never one of
    the same run. (``derive_seed(seed, epoch)`` is the batch-order seed divreg has always used.)

    Example:
        >>> derive_seed(2, 5)
        15843
    """
    value = int(seed)
    for key in keys:
        value = (value * _RADIX + int(key)) % _MODULUS
    return value


def uniform_draw(seed: int, *keys: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, keys): the same on every process."""
    return random.Random(derive_seed(seed, *keys)).random()


def check_batch_size(batch_size: int, num_examples: int, num_processes: int = 1, micro_batches: int = 1) -> None:
    """The one check of a global batch size: positive, at most the data, and divisible by
    processes x micro-batches (each gets an equal share)."""
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_examples} training examples"
                         if batch_size > num_examples else f"batch_size must be >= 1, got {batch_size}")
    if batch_size % (num_processes * micro_batches):
        raise ValueError(f"batch_size={batch_size} must be divisible by processes x micro-batches "
                         f"({num_processes} x {micro_batches})")


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """(num_batches, batch_size) dataset indices of one epoch: a permutation seeded by
    ``derive_seed(seed, epoch)``, the last incomplete batch dropped."""
    check_batch_size(batch_size, num_examples)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
    num_batches = num_examples // batch_size
    return order[: num_batches * batch_size].view(num_batches, batch_size)


def step_batch(num_examples: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Dataset indices (batch_size,) of global step ``step``: the epochs' batch orders one after
    another (step s is batch s mod E of epoch s // E, E batches per epoch)."""
    check_batch_size(batch_size, num_examples)
    epoch, position = divmod(step, num_examples // batch_size)
    return epoch_batches(num_examples, batch_size, seed, epoch)[position]
