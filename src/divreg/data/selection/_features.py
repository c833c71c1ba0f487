"""A block of examples' hashed n-gram features kept for later phases: the bucket ids of every
example concatenated (uint16 when B <= 65536, else int32: ~2 bytes per n-gram) and the number of
n-grams and of words of each example. One pass of tokenizing and hashing serves the raw model,
the weights, the selection's counts and the token budget; the texts are never read twice."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from ._ngrams import NgramHasher


@dataclass
class Features:
    ids: np.ndarray  # (total n-grams,) bucket ids, examples one after the other
    ngrams: np.ndarray  # (N,) int64 n-grams per example
    words: np.ndarray  # (N,) int64 words per example
    buckets: int

    def __len__(self) -> int:
        return len(self.ngrams)

    @property
    def offsets(self) -> np.ndarray:
        """(N + 1,) start of each example's ids, and the end."""
        return np.concatenate([[0], np.cumsum(self.ngrams)])

    def counts(self, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """(B,) int64 summed counts of the examples in ``mask`` (all by default)."""
        ids = self.ids if mask is None else self.ids[np.repeat(np.asarray(mask, dtype=bool), self.ngrams)]
        return np.bincount(ids, minlength=self.buckets).astype(np.int64)

    def log_weights(self, log_diff: np.ndarray) -> np.ndarray:
        """(N,) or (N, T) ``np.dot(log_diff, dense counts)`` per example: the reference's arithmetic
        (same summation, so the same floats), not a sparse sum that would round differently."""
        offsets, weights = self.offsets.tolist(), []
        ones = np.ones(int(self.ngrams.max()) if len(self) else 0)  # float64 counts: no int64 -> float64 copy in np.dot
        for start, end in zip(offsets[:-1], offsets[1:]):
            weights.append(np.dot(log_diff, np.bincount(self.ids[start:end], weights=ones[:end - start],
                                                        minlength=self.buckets)))
        shape = (len(self),) + np.shape(log_diff)[:-1]
        return np.asarray(weights, dtype=np.float64).reshape(shape)

    def save(self, path: str) -> None:
        np.savez(path, ids=self.ids, ngrams=self.ngrams, words=self.words, buckets=self.buckets)

    @classmethod
    def load(cls, path: str) -> "Features":
        with np.load(path) as stored:
            return cls(stored["ids"], stored["ngrams"], stored["words"], int(stored["buckets"]))


def featurize(texts: Iterable[str], hasher: NgramHasher, batch_size: int = 2048) -> Features:
    """The features of every text (tokenized and hashed once, ``batch_size`` texts at a time)."""
    dtype = np.uint16 if hasher.buckets <= 1 << 16 else np.int32
    blocks, ngrams, words = [], [], []
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, batch_size)):
        ids, batch_ngrams, batch_words = hasher.ids_batch(batch)
        blocks.append(ids.astype(dtype))
        ngrams.append(batch_ngrams)
        words.append(batch_words)
    if not blocks:
        return Features(np.zeros(0, dtype=dtype), np.zeros(0, np.int64), np.zeros(0, np.int64), hasher.buckets)
    return Features(np.concatenate(blocks), np.concatenate(ngrams), np.concatenate(words), hasher.buckets)
