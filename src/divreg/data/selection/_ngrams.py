r"""Hashed n-gram features as DSIR's reference package computes them (``data-selection``,
``hashed_ngram_dsir.get_ngram_counts``): lowercased text, NLTK's ``WordPunctTokenizer`` pattern
``\w+|[^\w\s]+``, unigrams then 2..n-grams joined by single spaces, each hashed to one of B buckets
(sha256 of the UTF-8 text as a big-endian integer, modulo B).

The pattern is compiled as NLTK compiles it: NLTK 3.10 (what ``data-selection`` installs today)
uses the third-party ``regex`` engine, whose ``\w`` differs from the standard library's ``re`` on
much non-ASCII text (combining marks in Devanagari or decomposed accents, ``²``...): the default
``engine="regex"``. ``engine="re"`` reproduces older NLTK releases, which used ``re`` (and
tokenizes about a third faster); on ASCII text the two agree.

The speed comes from doing per n-gram only what must be done per n-gram, over a batch of
examples at a time: words get integer ids (one dictionary lookup per word), an n-gram is the
integer code (id of its (n-1)-gram prefix, id of its last word), looked up in a dictionary; only
an n-gram never seen before has its text built and hashed, once. The text hashed is the
reference's (prefix text + " " + word = ``" ".join(words[i:i+n])``), so the buckets are identical.
"""

from __future__ import annotations

import hashlib
import re
from itertools import chain, repeat
from typing import Sequence

import numpy as np
import regex

WORDPUNCT = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)  # NLTK 3.10's WordPunctTokenizer
WORDPUNCT_RE = re.compile(r"\w+|[^\w\s]+", re.UNICODE | re.MULTILINE | re.DOTALL)  # older NLTK's
ENGINES = ("regex", "re")
HASHES = ("sha256", "blake2b")
_SHIFT = 32  # code of an n-gram = (prefix id << 32) | last word id
_MASK = (1 << _SHIFT) - 1


def buckets_of(texts: Sequence[str], buckets: int, hash: str) -> np.ndarray:
    """(len(texts),) int64 bucket of each text: its digest as a big-endian integer modulo B."""
    if hash == "sha256":
        digests, limbs = b"".join(hashlib.sha256(t.encode("utf-8")).digest() for t in texts), 4
    else:
        digests, limbs = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts), 1
    words = np.frombuffer(digests, dtype=">u8").reshape(len(texts), limbs).astype(np.uint64)
    if buckets >= 1 << 31:  # the vectorized remainder below would overflow
        return np.array([int.from_bytes(digests[i * 8 * limbs:(i + 1) * 8 * limbs], "big") % buckets
                         for i in range(len(texts))], dtype=np.int64)
    modulus, base = np.uint64(buckets), np.uint64(pow(2, 64, buckets))
    remainder = np.zeros(len(texts), dtype=np.uint64)
    for limb in range(limbs):  # Horner: (r * 2^64 + limb) mod B, every term below 2^62
        remainder = (remainder * base + words[:, limb] % modulus) % modulus
    return remainder.astype(np.int64)


class _Level(dict):
    """Distinct n-grams of one length: key (a word, or a code) -> dense id; texts and buckets by id."""

    def __init__(self):
        super().__init__()
        self.texts: list[str] = []
        self.buckets = np.zeros(0, dtype=np.int64)

    def lookup(self, keys: list, text_of, buckets: int, hash: str) -> np.ndarray:
        """(len(keys),) ids of the keys, adding (and hashing) the keys not seen before."""
        found = np.fromiter(map(self.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(found < 0)
        if len(missing):
            new = list(dict.fromkeys(keys[i] for i in missing))  # distinct, in order
            texts = text_of(new)
            first = len(self.texts)
            self.update(zip(new, range(first, first + len(new))))
            self.texts.extend(texts)
            self.buckets = np.concatenate([self.buckets, buckets_of(texts, buckets, hash)])
            found[missing] = np.fromiter(map(self.__getitem__, (keys[i] for i in missing)), dtype=np.int64,
                                         count=len(missing))
        return found


class _CodeTable:
    """Distinct n-grams of one length >= 2: int64 code -> dense id, an open-addressing hash table in
    numpy (linear probing, load <= 1/2), so a batch's lookups are a few vectorized passes instead
    of a Python dictionary probe per n-gram; texts (if kept) and buckets by id."""

    def __init__(self, keep_texts: bool, bits: int = 16):
        self.keep_texts, self.bits, self.size = keep_texts, bits, 0
        self.keys = np.full(1 << bits, -1, dtype=np.int64)  # -1: empty slot
        self.values = np.zeros(1 << bits, dtype=np.int64)
        self.texts: list[str] = []
        self.buckets = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.size

    def _slots(self, codes: np.ndarray) -> np.ndarray:  # Fibonacci hashing of the code
        return ((codes.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, codes: np.ndarray) -> np.ndarray:
        """(len(codes),) ids, -1 for codes not in the table."""
        found, pending, slots, mask = np.full(len(codes), -1, dtype=np.int64), np.arange(len(codes)), \
            self._slots(codes), (1 << self.bits) - 1
        while len(pending):
            keys = self.keys[slots]
            hit = keys == codes[pending]
            found[pending[hit]] = self.values[slots[hit]]
            more = ~hit & (keys != -1)
            pending, slots = pending[more], (slots[more] + 1) & mask
        return found

    def _insert(self, codes: np.ndarray, ids: np.ndarray) -> None:  # distinct codes not in the table
        pending, slots, mask = np.arange(len(codes)), self._slots(codes), (1 << self.bits) - 1
        while len(pending):
            empty = np.flatnonzero(self.keys[slots] == -1)
            claimed = slots[empty]
            self.keys[claimed] = codes[pending[empty]]  # several codes on one slot: the last write wins
            won = empty[self.keys[claimed] == codes[pending[empty]]]
            self.values[slots[won]] = ids[pending[won]]
            left = np.ones(len(pending), dtype=bool)
            left[won] = False
            pending, slots = pending[left], (slots[left] + 1) & mask

    def lookup(self, codes: np.ndarray, text_of, buckets: int, hash: str) -> np.ndarray:
        """(len(codes),) ids, adding (and hashing) the codes not seen before."""
        found = self.find(codes)
        missing = found < 0
        if missing.any():
            new = np.unique(codes[missing])  # sorted
            texts = text_of(new.tolist())
            ids = np.arange(self.size, self.size + len(new))
            self.size += len(new)
            if 2 * self.size > len(self.keys):  # grow and re-insert
                stored = np.flatnonzero(self.keys >= 0)
                old_keys, old_values = self.keys[stored], self.values[stored]
                while 2 * self.size > (1 << self.bits):
                    self.bits += 1
                self.keys = np.full(1 << self.bits, -1, dtype=np.int64)
                self.values = np.zeros(1 << self.bits, dtype=np.int64)
                self._insert(old_keys, old_values)
            self._insert(new, ids)
            if self.keep_texts:
                self.texts.extend(texts)
            self.buckets = np.concatenate([self.buckets, buckets_of(texts, buckets, hash)])
            found[missing] = ids[np.searchsorted(new, codes[missing])]
        return found


class NgramHasher:
    """Bucket ids of examples' unigrams then 2..n-grams (the reference's order within an example),
    each distinct n-gram hashed once. The interned n-grams are dropped when more than
    ``cache_size`` are held (bounded memory; the answer does not change).

    Args:
        buckets: number of hash buckets B.
        n: unigrams plus 2..n-grams.
        hash: ``"sha256"`` (the reference's buckets) or ``"blake2b"`` (an 8-byte digest: other
            buckets, the same method).
        cache_size: most distinct n-grams (all lengths) held at once (< 2**31).
        engine: the tokenizer pattern's regular-expression engine: ``"regex"`` (NLTK 3.10's) or
            ``"re"`` (older NLTK's).
    """

    def __init__(self, buckets: int = 10000, n: int = 2, hash: str = "sha256", cache_size: int = 5_000_000,
                 engine: str = "regex"):
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if hash not in HASHES:
            raise ValueError(f"hash must be one of {HASHES} (sha256: the reference's buckets), got {hash!r}")
        if not 1 <= cache_size < 1 << 31:
            raise ValueError(f"cache_size must be in [1, 2**31), got {cache_size}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES} (regex: NLTK 3.10's tokenizer), got {engine!r}")
        self.buckets, self.n, self.hash, self.cache_size, self.engine = buckets, n, hash, cache_size, engine
        self._pattern = WORDPUNCT if engine == "regex" else WORDPUNCT_RE
        self._levels = self._new_levels()

    def _new_levels(self) -> list:
        return [_Level()] + [_CodeTable(keep_texts=size < self.n) for size in range(2, self.n + 1)]

    def __getstate__(self):  # a worker starts with an empty cache
        return {"buckets": self.buckets, "n": self.n, "hash": self.hash, "cache_size": self.cache_size,
                "engine": self.engine}

    def __setstate__(self, state):
        self.__init__(**state)

    def bucket(self, text: str) -> int:
        """The bucket of one n-gram's text."""
        return int(buckets_of([text], self.buckets, self.hash)[0])

    def words(self, text: str) -> list[str]:
        return self._pattern.findall(text.lower())

    def ids_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bucket ids of every example's unigrams then 2..n-grams, the examples one after the
        other; n-grams per example (E,); words per example (E,))."""
        if sum(len(level) for level in self._levels) > self.cache_size:
            self._levels = self._new_levels()
        tokens = [self.words(text) for text in texts]
        words = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))  # (E,)
        flat = list(chain.from_iterable(tokens))
        unigrams = self._levels[0]
        word_ids = unigrams.lookup(flat, lambda new: new, self.buckets, self.hash)  # (W,)
        example = np.repeat(np.arange(len(texts)), words)  # (W,) example of each word
        remaining = words[example] - (np.arange(len(flat)) - np.repeat(np.cumsum(words) - words, words))  # words from here
        parts, owners, ids = [unigrams.buckets[word_ids]], [example], word_ids
        for size in range(2, self.n + 1):
            starts = np.flatnonzero(remaining >= size)  # word positions where a size-gram starts
            prefix, level = self._levels[size - 2], self._levels[size - 1]
            codes = (ids[starts] << _SHIFT) | word_ids[starts + size - 1]  # (grams,)
            grams = np.full(len(flat), -1, dtype=np.int64)
            grams[starts] = level.lookup(codes, lambda new, p=prefix: [p.texts[c >> _SHIFT] + " "
                                                                       + unigrams.texts[c & _MASK] for c in new],
                                         self.buckets, self.hash)
            parts.append(level.buckets[grams[starts]])
            owners.append(example[starts])
            ids = grams
        order = np.argsort(np.concatenate(owners), kind="stable")  # group by example, unigrams first
        ngrams = np.bincount(np.concatenate(owners), minlength=len(texts)).astype(np.int64)
        return np.concatenate(parts)[order], ngrams, words

    def ids(self, text: str) -> tuple[np.ndarray, int]:
        """(bucket ids of every unigram then every 2..n-gram, number of words) of one example."""
        ids, _, words = self.ids_batch([text])
        return ids, int(words[0])

    def counts(self, text: str) -> np.ndarray:
        """The dense (buckets,) int64 feature vector of one example."""
        ids, _ = self.ids(text)
        return np.bincount(ids, minlength=self.buckets)
