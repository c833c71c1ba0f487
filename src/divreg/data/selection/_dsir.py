r"""DSIR's models and resampling (Xie et al., "Data Selection for Language Models via Importance
Resampling", 2023, arXiv 2302.03169; reference package ``data-selection``, ``HashedNgramDSIR``;
official code github.com/p-lambda/dsir).

Bag-of-n-grams models p (target) and q (raw) are the normalized hashed counts; an example's log
importance weight is :math:`\sum_j c_j(x)(\log(p_j + 10^{-8}) - \log(q_j + 10^{-8}))`; examples
shorter than ``min_example_length`` words are not eligible; the selection is the top k of the log
weights plus Gumbel noise (sampling without replacement in proportion to the weights) or without
noise (deterministic top-k). Several targets (the reference's ``separate_targets``) each get their
share of k, chosen one target after the other among the examples not yet chosen.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

from ._features import featurize
from ._ngrams import NgramHasher

LOG_FLOOR = 1e-8  # the reference's floor inside both logs


def bag_of_ngrams(texts: Iterable[str], hasher: NgramHasher, token_budget: Optional[int] = None) -> np.ndarray:
    """Summed feature counts of ``texts`` (int64, (buckets,)); with ``token_budget``, stop after
    the first example that takes the running total above it (the reference's rule, per shard)."""
    if token_budget is None:
        return featurize(texts, hasher).counts()
    total = np.zeros(hasher.buckets, dtype=np.int64)
    for text in texts:
        ids, _ = hasher.ids(text)
        total += np.bincount(ids, minlength=hasher.buckets)
        if total.sum() > token_budget:
            break
    return total


def log_ratio(target_counts: np.ndarray, raw_counts: np.ndarray, target_smoothing: float = 0.0) -> np.ndarray:
    """:math:`\\log(p + 10^{-8}) - \\log(q + 10^{-8})` per bucket, p and q the normalized counts;
    ``target_smoothing`` > 0 adds that pseudo-count to every target bucket first (Laplace; 0 as the
    reference).

    Args:
        target_counts: (B,) or (T, B) for T separate targets.
        raw_counts: (B,).

    Returns:
        (B,) or (T, B) float64.
    """
    target_counts, raw_counts = np.asarray(target_counts), np.asarray(raw_counts)
    if target_counts.shape[-1:] != raw_counts.shape or raw_counts.ndim != 1 or target_counts.ndim > 2:
        raise ValueError(f"target counts (B,) or (T, B) and raw counts (B,) expected, got {target_counts.shape} "
                         f"and {raw_counts.shape}")
    if np.any(target_counts.sum(axis=-1) <= 0):
        raise ValueError("a target has no n-grams: give target examples with text")
    if raw_counts.sum() <= 0:
        raise ValueError("the raw corpus has no n-grams: give raw examples with text")
    target = target_counts + target_smoothing
    p, q = target / target.sum(axis=-1, keepdims=True), raw_counts / raw_counts.sum()
    return np.log(p + LOG_FLOOR) - np.log(q + LOG_FLOOR)


def log_importance_weights(texts: Iterable[str], hasher: NgramHasher, log_diff: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(log importance weights (N,) or (N, T), number of words (N,)) of each example; the weight is
    ``np.dot(log_diff, counts)`` on the dense counts, as the reference computes it."""
    features = featurize(texts, hasher)
    return features.log_weights(log_diff), features.words


def resample(log_weights: np.ndarray, eligible: np.ndarray, k: int, *, seed: Optional[int] = None,
             top_k: bool = False, rng: Optional[np.random.RandomState] = None) -> np.ndarray:
    """Indices (sorted) of ``k`` eligible examples: the top k of log weight + Gumbel noise (sampling
    without replacement with probabilities proportional to the weights; the noise from
    ``np.random.RandomState(seed)`` (or ``rng``), drawn over the eligible examples in order, as the
    reference draws it from numpy's global generator after ``np.random.seed(seed)``), or the top k
    of the log weights themselves (``top_k=True``)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    eligible = np.asarray(eligible, dtype=bool)
    if log_weights.shape != eligible.shape or log_weights.ndim != 1:
        raise ValueError("log_weights and eligible must be 1-D arrays of one length")
    candidates = np.where(eligible)[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= len(candidates):
        raise ValueError(f"num_to_sample={k!r} must be in [1, {len(candidates)}] (the eligible examples: long enough "
                         "and not already selected)")
    scores = log_weights[eligible].copy()
    if not top_k:
        scores += (rng if rng is not None else np.random.RandomState(seed)).gumbel(size=scores.shape)
    chosen = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
    return np.sort(candidates[chosen])


def split_counts(k: int, proportions: Sequence[float]) -> list[int]:
    """Examples per target: ``int(k * p_t)``, the last target taking the remainder (the
    reference's rule)."""
    proportions = np.asarray(proportions, dtype=np.float64)
    if proportions.ndim != 1 or len(proportions) == 0 or np.any(proportions < 0) or proportions.sum() <= 0:
        raise ValueError(f"target proportions must be non-negative with a positive sum, got {proportions.tolist()}")
    proportions = proportions / proportions.sum()
    counts = [int(k * p) for p in proportions]
    counts[-1] += k - sum(counts)
    return counts


def resample_targets(log_weights: np.ndarray, eligible: np.ndarray, counts: Sequence[int], *,
                     seed: Optional[int] = None, top_k: bool = False) -> list[np.ndarray]:
    """Per target t (columns of ``log_weights``, (N, T)), the sorted indices of its ``counts[t]``
    examples, chosen by :func:`resample` one target after the other among the eligible examples
    not yet chosen, the Gumbel noise drawn from one ``RandomState(seed)`` in that order (the
    reference's ``separate_targets`` resampling)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 2 or log_weights.shape[1] != len(counts):
        raise ValueError(f"log_weights must be (N, T) with T = {len(counts)} targets, got {log_weights.shape}")
    remaining, rng, chosen = np.array(eligible, dtype=bool), np.random.RandomState(seed), []
    for target, count in enumerate(counts):
        if count == 0:
            chosen.append(np.zeros(0, dtype=np.int64))
            continue
        picked = resample(log_weights[:, target], remaining, count, top_k=top_k, rng=rng)
        remaining[picked] = False
        chosen.append(picked)
    return chosen


def kl_reduction(target_counts: np.ndarray, raw_counts: np.ndarray, selected_counts: np.ndarray) -> float:
    """:math:`KL(p\\|q_{raw}) - KL(p\\|q_{sel})` over the hashed features, each distribution the
    normalized counts plus 1e-8 per bucket (renormalized), so that an empty bucket is not infinite."""
    def normalized(counts):
        values = counts / counts.sum() + LOG_FLOOR
        return values / values.sum()

    p, raw, selected = normalized(target_counts), normalized(raw_counts), normalized(selected_counts)
    return float(np.sum(p * (np.log(p) - np.log(raw))) - np.sum(p * (np.log(p) - np.log(selected))))


def virtual_shard_order(num_examples: int, num_shards: int) -> np.ndarray:
    """The reference's order of one file's examples over ``num_shards`` virtual shards (shard j
    takes examples i with i % num_shards == j; the shards are concatenated)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return np.concatenate([np.arange(j, num_examples, num_shards) for j in range(num_shards)])


def reference_virtual_shards(num_files: int, num_proc: int) -> list[int]:
    """Virtual shards per file of the reference run with ``num_proc`` processes
    (``_get_virtually_sharded_datasets``: ``num_proc // num_files`` each, at least 1, the remainder
    to the first files)."""
    per_file = max(1, num_proc // num_files)
    remainder = num_proc % num_files if num_proc >= num_files else 0
    return [per_file + (1 if i < remainder else 0) for i in range(num_files)]


def reference_order(examples_per_file: Sequence[int], num_proc: int) -> np.ndarray:
    """Global example indices (files concatenated) in the order the reference with ``num_proc``
    processes lays out its weights: per file, its virtual shards one after the other."""
    shards = reference_virtual_shards(len(examples_per_file), num_proc)
    starts = np.concatenate([[0], np.cumsum(examples_per_file)[:-1]]).astype(np.int64)
    return np.concatenate([start + virtual_shard_order(count, s)
                           for start, count, s in zip(starts, examples_per_file, shards)]).astype(np.int64)


def fit_mask(ngrams_per_example: np.ndarray, examples_per_file: Sequence[int], token_budget: Optional[int],
             num_proc: int = 1) -> np.ndarray:
    """Which examples the reference's raw model counts under a token budget: each of its virtual
    shards (see :func:`reference_virtual_shards`) reads its examples in order and stops after the
    one that takes its n-gram total above ``token_budget // number of shards``. ``None``: all."""
    ngrams_per_example = np.asarray(ngrams_per_example, dtype=np.int64)
    if token_budget is None:
        return np.ones(len(ngrams_per_example), dtype=bool)
    shards = reference_virtual_shards(len(examples_per_file), num_proc)
    per_shard = token_budget // sum(shards)
    mask, start = np.zeros(len(ngrams_per_example), dtype=bool), 0
    for count, num_shards in zip(examples_per_file, shards):
        for j in range(num_shards):
            indices = start + np.arange(j, count, num_shards)
            before = np.cumsum(ngrams_per_example[indices]) - ngrams_per_example[indices]  # total before each
            mask[indices[before <= per_shard]] = True
        start += count
    return mask


def gumbel_top_k_probability(weights: Sequence[float], subset: Sequence[int]) -> float:
    """The exact probability that sampling without replacement in proportion to ``weights``
    (successive draws) selects exactly the set ``subset`` (summed over its orders): the
    distribution Gumbel top-k realizes. For tests on tiny cases."""
    import itertools

    total = float(sum(weights))
    probability = 0.0
    for order in itertools.permutations(subset):
        remaining, p = total, 1.0
        for index in order:
            p *= weights[index] / remaining
            remaining -= weights[index]
        probability += p
    return probability if math.isfinite(probability) else 0.0
