r"""Data selection by importance resampling with hashed n-gram features (DSIR: Xie et al., "Data
Selection for Language Models via Importance Resampling", 2023, arXiv 2302.03169; reference
package ``data-selection``, ``HashedNgramDSIR``).

An example's features are the counts of its hashed unigrams and 2..n-grams: lowercased text,
NLTK's ``WordPunctTokenizer`` pattern ``\w+|[^\w\s]+``, n-grams joined by single spaces, each
hashed to one of B buckets. Bag-of-n-grams models p (target) and q (raw) are the normalized
counts; an example's log importance weight is :math:`\sum_j c_j(x)(\log(p_j + 10^{-8}) -
\log(q_j + 10^{-8}))`; examples shorter than ``min_example_length`` words are not eligible; the
selection is the top k of the log weights plus Gumbel noise (sampling without replacement in
proportion to the weights) or without noise (deterministic top-k).

``hash="sha256"`` (compat) gives the reference's buckets exactly (sha256 of the UTF-8 text, as an
integer, modulo B); ``hash="blake2b"`` (fast) a cheaper 8-byte digest: other buckets, the same
method. Speed comes from hashing each distinct n-gram once (a cache), the compiled tokenizer
pattern and vectorized counting, never from changing the answer.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np

WORDPUNCT = re.compile(r"\w+|[^\w\s]+", re.UNICODE | re.MULTILINE | re.DOTALL)  # NLTK's WordPunctTokenizer
HASHES = ("sha256", "blake2b")
LOG_FLOOR = 1e-8  # the reference's floor inside both logs


class NgramHasher:
    """Bucket ids of an example's unigrams then 2..n-grams (the reference's order), each distinct
    n-gram hashed once (a cache of at most ``cache_size`` entries, cleared when full)."""

    def __init__(self, buckets: int = 10000, n: int = 2, hash: str = "sha256", cache_size: int = 5_000_000):
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if hash not in HASHES:
            raise ValueError(f"hash must be one of {HASHES} (sha256: the reference's buckets), got {hash!r}")
        self.buckets, self.n, self.hash, self.cache_size = buckets, n, hash, cache_size
        self._cache: dict[str, int] = {}

    def bucket(self, text: str) -> int:
        found = self._cache.get(text)
        if found is None:
            if self.hash == "sha256":
                found = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big") % self.buckets
            else:
                found = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(),
                                       "big") % self.buckets
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[text] = found
        return found

    def words(self, text: str) -> list[str]:
        return WORDPUNCT.findall(text.lower())

    def ids(self, text: str) -> tuple[np.ndarray, int]:
        """(bucket ids of every unigram and n-gram, number of words)."""
        words = self.words(text)
        grams = list(words)
        for size in range(2, self.n + 1):
            grams += [" ".join(words[i:i + size]) for i in range(len(words) - size + 1)]
        bucket = self.bucket
        return np.fromiter((bucket(g) for g in grams), dtype=np.int64, count=len(grams)), len(words)

    def counts(self, text: str) -> np.ndarray:
        """The dense (buckets,) int64 feature vector of one example."""
        ids, _ = self.ids(text)
        return np.bincount(ids, minlength=self.buckets)


def bag_of_ngrams(texts: Iterable[str], hasher: NgramHasher, token_budget: Optional[int] = None) -> np.ndarray:
    """Summed feature counts of ``texts`` (int64, (buckets,)); with ``token_budget``, stop after
    the first example that takes the running total above it (the reference's rule, per shard)."""
    total = np.zeros(hasher.buckets, dtype=np.int64)
    for text in texts:
        ids, _ = hasher.ids(text)
        total += np.bincount(ids, minlength=hasher.buckets)
        if token_budget is not None and total.sum() > token_budget:
            break
    return total


def log_ratio(target_counts: np.ndarray, raw_counts: np.ndarray, target_smoothing: float = 0.0) -> np.ndarray:
    """:math:`\\log(p + 10^{-8}) - \\log(q + 10^{-8})` per bucket, p and q the normalized counts;
    ``target_smoothing`` > 0 adds that pseudo-count to every target bucket first (Laplace; 0 as the
    reference)."""
    if target_counts.shape != raw_counts.shape:
        raise ValueError(f"target and raw counts differ in shape: {target_counts.shape} vs {raw_counts.shape}")
    if target_counts.sum() <= 0:
        raise ValueError("the target has no n-grams: give target examples with text")
    if raw_counts.sum() <= 0:
        raise ValueError("the raw corpus has no n-grams: give raw examples with text")
    target = target_counts + target_smoothing
    p, q = target / target.sum(), raw_counts / raw_counts.sum()
    return np.log(p + LOG_FLOOR) - np.log(q + LOG_FLOOR)


def log_importance_weights(texts: Iterable[str], hasher: NgramHasher, log_diff: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(log importance weight, number of words) of each example; the weight is
    ``np.dot(log_diff, counts)`` on the dense counts, as the reference computes it."""
    weights, lengths = [], []
    for text in texts:
        ids, words = hasher.ids(text)
        weights.append(np.dot(log_diff, np.bincount(ids, minlength=hasher.buckets)))
        lengths.append(words)
    return np.asarray(weights, dtype=np.float64), np.asarray(lengths, dtype=np.int64)


def resample(log_weights: np.ndarray, eligible: np.ndarray, k: int, *, seed: Optional[int] = None,
             top_k: bool = False) -> np.ndarray:
    """Indices (sorted) of ``k`` eligible examples: the top k of log weight + Gumbel noise (sampling
    without replacement with probabilities proportional to the weights; the noise from
    ``np.random.RandomState(seed)``, drawn over the eligible examples in order, as the reference
    draws it from numpy's global generator after ``np.random.seed(seed)``), or the top k of the
    log weights themselves (``top_k=True``)."""
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
        scores += np.random.RandomState(seed).gumbel(size=scores.shape)
    chosen = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
    return np.sort(candidates[chosen])


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
