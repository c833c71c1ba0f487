r"""Hashed n-gram features as DSIR's reference package computes them (``data-selection``,
``hashed_ngram_dsir.get_ngram_counts``): lowercased text, NLTK's ``WordPunctTokenizer`` pattern
``\w+|[^\w\s]+``, unigrams then 2..n-grams joined by single spaces, each hashed to one of B buckets
(sha256 of the UTF-8 text as a big-endian integer, modulo B).

The pattern is compiled as NLTK compiles it: NLTK 3.10 (what ``data-selection`` installs today)
uses the third-party ``regex`` engine, whose ``\w`` differs from the standard library's ``re`` on
much non-ASCII text (combining marks in Devanagari or decomposed accents, ``²``...): the default
``engine="regex"``. ``engine="re"`` reproduces older NLTK releases, which used ``re``; on ASCII
text the two agree.

The speed comes from doing per token and per n-gram only what must be done per token and per
n-gram, over a batch of examples at a time (the buckets are identical to the reference's; the
tests check it against hashing every n-gram's text, on adversarial input and forced collisions):

- ASCII texts are tokenized in numpy over the batch's bytes: the byte classes (whitespace, ``\w``,
  other) are read from the tokenizer's own engine, and tokens are the maximal runs of one class.
  A token of at most 16 bytes is identified exactly by (first 8 bytes, last 8 bytes, length),
  found in a numpy open-addressing table of the known words by a 64-bit mix of that key, the key
  then compared (a mix collision falls back to Python strings). A Python string and a dictionary
  entry are made only for a word never seen before. Non-ASCII texts and longer tokens take the
  pattern and a dictionary.
- An n-gram of length >= 2 is an integer code (id of its (n-1)-gram prefix << 32 | id of its last
  word); a batch's distinct codes are found with one ``searchsorted`` in a sorted array of the
  known codes (bucket stored alongside), and the new ones merged in.
- Only a new n-gram has its UTF-8 text built (a numpy object-array add: prefix bytes + b" ", word
  bytes; the reference's ``" ".join(words[i:i+n])``) and hashed, through a chain of C-level maps.
- The output order (unigrams then 2..n-grams per example) is a computed scatter, not a sort.

Measured with ``benchmarks/dsir.py`` (the benchmarks page of the docs site).
"""

from __future__ import annotations

import functools
import hashlib
import operator
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
# ASCII word characters and the ASCII whitespace both engines and str.split agree on (not \x1c-\x1f)
_SIMPLE = bytes(range(48, 58)) + bytes(range(65, 91)) + b"_" + bytes(range(97, 123)) + b" \t\n\r\x0b\x0c"
_SHA256_DIGEST = type(hashlib.sha256()).digest
_BLAKE8 = functools.partial(hashlib.blake2b, digest_size=8)
_BLAKE_DIGEST = type(hashlib.blake2b()).digest


def _digests(messages, hash: str) -> bytes:
    """Concatenated digests of an iterable of bytes (C-level map chain: no Python frame per item)."""
    if hash == "sha256":
        return b"".join(map(_SHA256_DIGEST, map(hashlib.sha256, messages)))
    return b"".join(map(_BLAKE_DIGEST, map(_BLAKE8, messages)))


def _buckets_of_digests(digests: bytes, count: int, buckets: int, hash: str) -> np.ndarray:
    limbs = 4 if hash == "sha256" else 1
    if buckets >= 1 << 31:  # the vectorized remainder below would overflow
        return np.array([int.from_bytes(digests[i * 8 * limbs:(i + 1) * 8 * limbs], "big") % buckets
                         for i in range(count)], dtype=np.int64)
    words = np.frombuffer(digests, dtype=">u8").reshape(count, limbs).astype(np.uint64)
    modulus, base = np.uint64(buckets), np.uint64(pow(2, 64, buckets))
    remainder = np.zeros(count, dtype=np.uint64)
    for limb in range(limbs):  # Horner: (r * 2^64 + limb) mod B, every term below 2^62
        remainder = (remainder * base + words[:, limb] % modulus) % modulus
    return remainder.astype(np.int64)


def buckets_of(texts: Sequence[str], buckets: int, hash: str) -> np.ndarray:
    """(len(texts),) int64 bucket of each text: its digest as a big-endian integer modulo B."""
    return _buckets_of_digests(_digests(map(str.encode, texts), hash), len(texts), buckets, hash)


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _mix(first: np.ndarray, last: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A 64-bit mix of a short word's exact key (first 8 bytes, last 8 bytes, length)."""
    return (first * np.uint64(0x9E3779B97F4A7C15)) ^ (last * np.uint64(0xC2B2AE3D27D4EB4F)) ^ length.astype(np.uint64)


class _Words:
    """Distinct words: word -> dense id; UTF-8 bytes, bytes + b" " (as a prefix) and bucket by id.
    Words of at most 16 ASCII bytes are also indexed in numpy by their exact key (first 8 bytes,
    last 8 bytes, length): a sorted array of the keys' 64-bit mixes, so that the tokens of ASCII
    text find their ids without a Python string each (:meth:`lookup_keys`)."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.raw: list[bytes] = []
        self.spaced: list[bytes] = []
        self.raw_array = np.zeros(0, dtype=object)  # the same bytes as numpy object arrays (C-level gathers)
        self.spaced_array = np.zeros(0, dtype=object)
        self.buckets = np.zeros(0, dtype=np.int64)
        self.bits = 12  # open-addressing table of the indexed words' mixes (linear probing, load <= 1/4)
        self.slot_mixes = np.zeros(1 << self.bits, dtype=np.uint64)
        self.slot_ids = np.full(1 << self.bits, -1, dtype=np.int64)  # -1: empty slot
        self.indexed = 0
        self.first = np.zeros(0, dtype=np.uint64)  # by id: the exact key (length -1: not indexed)
        self.last = np.zeros(0, dtype=np.uint64)
        self.length = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.raw)

    def _add(self, new: list, buckets: int, hash: str, keys=None) -> None:
        """Add distinct words not seen before (``keys``: their exact keys (first, last, length),
        when the caller has them: short ASCII words)."""
        encoded = [w.encode("utf-8") for w in new]
        start = len(self.raw)
        self.ids.update(zip(new, range(start, start + len(new))))
        self.raw.extend(encoded)
        self.spaced.extend(map(operator.add, encoded, repeat(b" ")))
        self.raw_array = np.concatenate([self.raw_array, _objects(encoded)])
        self.spaced_array = np.concatenate([self.spaced_array, _objects(self.spaced[start:])])
        self.buckets = np.concatenate([self.buckets, _buckets_of_digests(_digests(encoded, hash), len(new),
                                                                         buckets, hash)])
        if keys is not None:
            first, last, length = keys
        else:
            indexed = [w.isascii() and len(b) <= 16 for w, b in zip(new, encoded)]
            first = np.array([int.from_bytes(b[:8].ljust(8, b"\0"), "big") for b in encoded], dtype=np.uint64)
            last = np.array([int.from_bytes(b[-8:], "big") for b in encoded], dtype=np.uint64)
            length = np.array([len(b) if ok else -1 for b, ok in zip(encoded, indexed)], dtype=np.int64)
        self.first = np.concatenate([self.first, first])
        self.last = np.concatenate([self.last, last])
        self.length = np.concatenate([self.length, length])
        chosen = np.flatnonzero(length >= 0)
        if len(chosen):
            self.indexed += len(chosen)
            if 4 * self.indexed > (1 << self.bits):  # grow: re-insert every indexed word
                while 4 * self.indexed > (1 << self.bits):
                    self.bits += 1
                self.slot_mixes = np.zeros(1 << self.bits, dtype=np.uint64)
                self.slot_ids = np.full(1 << self.bits, -1, dtype=np.int64)
                chosen = np.flatnonzero(self.length >= 0)
            else:
                chosen = chosen + start
            self._insert(_mix(self.first[chosen], self.last[chosen], self.length[chosen]), chosen)

    def _slots(self, mixes: np.ndarray) -> np.ndarray:
        return (mixes >> np.uint64(64 - self.bits)).astype(np.intp)

    def _insert(self, mixes: np.ndarray, ids: np.ndarray) -> None:
        """Put words (ids) in the table, each in the first empty slot from its home slot on."""
        mask, slots, pending = (1 << self.bits) - 1, self._slots(mixes), np.arange(len(mixes))
        while len(pending):
            empty = pending[self.slot_ids[slots[pending]] < 0]
            _, winners = np.unique(slots[empty], return_index=True)  # one word per empty slot
            won = empty[winners]
            self.slot_mixes[slots[won]], self.slot_ids[slots[won]] = mixes[won], ids[won]
            left = np.ones(len(mixes), dtype=bool)
            left[won] = False
            pending = pending[left[pending]]
            slots[pending] = (slots[pending] + 1) & mask

    def _find(self, mixes: np.ndarray) -> np.ndarray:
        """(len(mixes),) id of the first word in the table with each mix, -1 if none."""
        mask, slots = (1 << self.bits) - 1, self._slots(mixes)
        ids = self.slot_ids[slots]
        found = np.where((ids >= 0) & (self.slot_mixes[slots] == mixes), ids, -1)
        pending = np.flatnonzero((ids >= 0) & (found < 0))
        while len(pending):
            slots[pending] = (slots[pending] + 1) & mask
            ids = self.slot_ids[slots[pending]]
            hit = (ids >= 0) & (self.slot_mixes[slots[pending]] == mixes[pending])
            found[pending[hit]] = ids[hit]
            pending = pending[(ids >= 0) & ~hit]
        return found

    def lookup(self, flat: list, buckets: int, hash: str) -> np.ndarray:
        """(len(flat),) ids of the words (strings), adding those not seen before."""
        found = np.fromiter(map(self.ids.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        missing = np.flatnonzero(found < 0)
        if len(missing):
            missing_words = list(map(flat.__getitem__, missing.tolist()))
            self._add(list(dict.fromkeys(missing_words)), buckets, hash)  # distinct, in order
            found[missing] = np.fromiter(map(self.ids.__getitem__, missing_words), dtype=np.int64,
                                         count=len(missing))
        return found

    def lookup_keys(self, first, last, length, text_of, buckets: int, hash: str):
        """(len(first),) ids of short ASCII tokens given by their exact keys (first 8 bytes, last 8
        bytes, length), adding those not seen before (``text_of(indices)``: the strings of those
        tokens); None if two different keys share a 64-bit mix (the caller uses strings)."""
        mixes = _mix(first, last, length)
        ids = self._find(mixes)
        hit = np.flatnonzero(ids >= 0)
        found = ids[hit]
        if not (np.array_equal(self.first[found], first[hit]) and np.array_equal(self.last[found], last[hit])
                and np.array_equal(self.length[found], length[hit])):
            return None
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            distinct, inverse = np.unique(mixes[missing], return_inverse=True)
            inverse = inverse.reshape(-1)
            one = np.empty(len(distinct), dtype=np.int64)
            one[inverse] = missing  # one token of each new mix
            same = one[inverse]
            if not (np.array_equal(first[same], first[missing]) and np.array_equal(last[same], last[missing])
                    and np.array_equal(length[same], length[missing])):
                return None
            start = len(self.raw)  # new words all: a short ASCII word known is in the table
            self._add(text_of(one), buckets, hash, (first[one], last[one], length[one]))
            ids[missing] = start + inverse
        return ids


class _Grams:
    """Distinct n-grams of one length >= 2 in a sorted int64 array of codes (np.unique of a batch,
    one searchsorted with sorted queries, np.insert of the new codes), with, aligned, their
    buckets and (for a length that is itself a prefix: ``keep_texts``) their dense ids; by id, the
    UTF-8 text + b" " of a prefix length."""

    def __init__(self, keep_texts: bool, buckets: int):
        self.keep_texts = keep_texts
        self.codes = np.zeros(0, dtype=np.int64)  # sorted
        self.code_buckets = np.zeros(0, dtype=np.uint16 if buckets <= 1 << 16 else np.int64)  # bucket of each code
        self.code_ids = np.zeros(0, dtype=np.int64)  # id of each code (keep_texts only)
        self.spaced_array = np.zeros(0, dtype=object)  # by id (keep_texts only): the text + b" "

    def __len__(self) -> int:
        return len(self.codes)

    def lookup(self, codes: np.ndarray, prefix_spaced: np.ndarray, words: _Words, buckets: int, hash: str):
        """(ids (None unless keep_texts), buckets) of the codes, adding (and hashing) the new ones."""
        unique, inverse = np.unique(codes, return_inverse=True)
        inverse = inverse.reshape(-1)
        position = np.searchsorted(self.codes, unique)
        hit = np.zeros(len(unique), dtype=bool)
        inside = np.flatnonzero(position < len(self.codes))
        hit[inside] = self.codes[position[inside]] == unique[inside]
        hits = np.flatnonzero(hit)
        new = np.flatnonzero(~hit)
        unique_buckets = np.empty(len(unique), dtype=self.code_buckets.dtype)
        unique_buckets[hits] = self.code_buckets[position[hits]]
        unique_ids = None
        if self.keep_texts:
            unique_ids = np.empty(len(unique), dtype=np.int64)
            unique_ids[hits] = self.code_ids[position[hits]]
        if len(new):
            new_codes = unique[new]
            texts = prefix_spaced[new_codes >> _SHIFT] + words.raw_array[new_codes & _MASK]  # object array of bytes
            new_buckets = _buckets_of_digests(_digests(texts.tolist(), hash), len(new), buckets, hash)
            unique_buckets[new] = new_buckets
            # merge the new (sorted) codes into the sorted arrays: new code k goes to position[new][k] + k
            destination = position[new] + np.arange(len(new))
            old = np.ones(len(self.codes) + len(new), dtype=bool)
            old[destination] = False
            self.codes = _merged(self.codes, new_codes, destination, old)
            self.code_buckets = _merged(self.code_buckets, new_buckets.astype(self.code_buckets.dtype), destination, old)
            if self.keep_texts:
                self.spaced_array = np.concatenate([self.spaced_array, texts + b" "])
                ids = np.arange(len(self.codes) - len(new), len(self.codes), dtype=np.int64)
                unique_ids[new] = ids
                self.code_ids = _merged(self.code_ids, ids, destination, old)
        return (None if unique_ids is None else unique_ids[inverse]), unique_buckets[inverse]


def _merged(values: np.ndarray, new: np.ndarray, destination: np.ndarray, old: np.ndarray) -> np.ndarray:
    out = np.empty(len(old), dtype=values.dtype)
    out[destination] = new
    out[old] = values
    return out


def _pick(values: list, indices: list):
    """values[i] for i in indices, as one C call."""
    if len(indices) == 1:
        return (values[indices[0]],)
    return operator.itemgetter(*indices)(values) if indices else ()


_HIGH = np.array([((1 << (8 * k)) - 1) << (8 * (8 - k)) for k in range(9)], dtype=np.uint64)  # keep the first k bytes
_LOW = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # keep the last k bytes


def _byte_classes(pattern, engine: str) -> np.ndarray:
    """(256,) uint8 class of each ASCII character under the tokenizer's own engine: 0 whitespace
    (no token), 1 word character (``\\w``), 2 other (``[^\\w\\s]``). Tokens of ASCII text are the
    maximal runs of class 1 and of class 2 (what ``\\w+|[^\\w\\s]+`` matches)."""
    word = (regex if engine == "regex" else re).compile(r"\w", pattern.flags)
    classes = np.full(256, 2, dtype=np.uint8)
    for code in range(128):
        char = chr(code)
        classes[code] = 0 if pattern.match(char) is None else (1 if word.match(char) else 2)
    return classes


def _simple(text: str) -> bool:
    return text.isascii() and not text.encode("ascii").translate(None, _SIMPLE)


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
        self._classes = _byte_classes(self._pattern, engine)
        self._levels = self._new_levels()

    def _new_levels(self) -> list:
        return [_Words()] + [_Grams(size < self.n, self.buckets) for size in range(2, self.n + 1)]

    def __getstate__(self):  # a worker starts with an empty cache
        return {"buckets": self.buckets, "n": self.n, "hash": self.hash, "cache_size": self.cache_size,
                "engine": self.engine}

    def __setstate__(self, state):
        self.__init__(**state)

    def bucket(self, text: str) -> int:
        """The bucket of one n-gram's text."""
        return int(buckets_of([text], self.buckets, self.hash)[0])

    def words(self, text: str) -> list[str]:
        lowered = text.lower()
        return lowered.split() if _simple(lowered) else self._pattern.findall(lowered)

    def _ascii_word_ids(self, lowered: list) -> tuple[np.ndarray, np.ndarray]:
        """(word ids (W,), words per text (E,)) of lowered ASCII texts, tokenized in numpy: the
        tokens are the maximal runs of word characters and of other non-space characters; each
        token of at most 16 bytes is identified exactly by (its first 8 bytes, its last 8 bytes,
        its length), deduplicated with np.unique of a 64-bit mix of the three (checked: a mix
        collision falls back to Python strings), so a Python string and a dictionary lookup are
        made once per distinct word of the batch, not per token."""
        unigrams = self._levels[0]
        joined = "\n".join(lowered)
        size = len(joined)
        padded = np.zeros(size + 16, dtype=np.uint8)
        padded[8:8 + size] = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        classes = self._classes.take(padded)
        classes[:8] = 0
        classes[8 + size:] = 0
        inner = classes[8:8 + size]
        token = inner != 0
        starts = np.flatnonzero(token & (inner != classes[7:7 + size])) + 8  # in padded coordinates
        ends = np.flatnonzero(token & (inner != classes[9:9 + size])) + 9
        boundaries = np.cumsum([0] + [len(t) + 1 for t in lowered]) + 8
        words = np.diff(np.searchsorted(starts, boundaries)).astype(np.int64)
        lengths = ends - starts
        ids = np.empty(len(starts), dtype=np.int64)
        short = lengths <= 16
        long = np.flatnonzero(~short)
        if len(long):  # rare: a Python string per token
            ids[long] = unigrams.lookup(list(map(joined.__getitem__, map(slice, (starts[long] - 8).tolist(),
                                                                             (ends[long] - 8).tolist()))),
                                        self.buckets, self.hash)
        if not len(long):  # every token short: no copies
            short, s, e, short_lengths = slice(None), starts, ends, lengths
        else:
            short = np.flatnonzero(short)
            s, e, short_lengths = starts[short], ends[short], lengths[short]
        if len(s):
            length = np.minimum(short_lengths, 8)
            window = np.ndarray((size + 9,), dtype=">u8", buffer=padded, strides=(1,))  # window[i]: padded[i:i+8]
            first = window[s].astype(np.uint64) & _HIGH[length]
            last = window[e - 8].astype(np.uint64) & _LOW[length]
            found = unigrams.lookup_keys(first, last, short_lengths, lambda chosen: list(map(
                joined.__getitem__, map(slice, (s[chosen] - 8).tolist(), (e[chosen] - 8).tolist()))),
                self.buckets, self.hash)
            if found is None:  # a 64-bit mix collision: Python strings
                tokens = [self._pattern.findall(t) for t in lowered]
                return (unigrams.lookup(list(chain.from_iterable(tokens)), self.buckets, self.hash),
                        np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)))
            ids[short] = found
        return ids, words

    def _word_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(word ids of every example's words, the examples one after the other (W,); words per
        example (E,))."""
        lowered = [t.lower() for t in texts]
        ascii = np.fromiter(map(str.isascii, lowered), dtype=bool, count=len(lowered))
        if ascii.all():
            return self._ascii_word_ids(lowered)
        unigrams = self._levels[0]
        words = np.zeros(len(texts), dtype=np.int64)
        parts = []
        if ascii.any():
            chosen = np.flatnonzero(ascii)
            ids, counts = self._ascii_word_ids([lowered[i] for i in chosen])
            words[chosen] = counts
            parts.append((chosen, ids, counts))
        chosen = np.flatnonzero(~ascii)
        tokens = [self._pattern.findall(lowered[i]) for i in chosen]
        counts = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        words[chosen] = counts
        parts.append((chosen, unigrams.lookup(list(chain.from_iterable(tokens)), self.buckets, self.hash), counts))
        first = np.cumsum(words) - words  # (E,) flat index of each example's first word
        out = np.empty(int(words.sum()), dtype=np.int64)
        for chosen, ids, counts in parts:
            out[np.repeat(first[chosen] - (np.cumsum(counts) - counts), counts) + np.arange(len(ids))] = ids
        return out, words

    def ids_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bucket ids of every example's unigrams then 2..n-grams, the examples one after the
        other; n-grams per example (E,); words per example (E,))."""
        if sum(len(level) for level in self._levels) > self.cache_size:
            self._levels = self._new_levels()
        unigrams = self._levels[0]
        word_ids, words = self._word_ids(texts)  # (W,), (E,)
        flat = word_ids
        counts = [np.maximum(words - size + 1, 0) for size in range(1, self.n + 1)]  # (E,) size-grams per example
        ngrams = np.sum(counts, axis=0).astype(np.int64)  # (E,)
        word_start = np.cumsum(words) - words  # (E,) flat index of each example's first word
        base = np.cumsum(ngrams) - ngrams - word_start  # (E,) output offset minus first word index
        example = np.repeat(np.arange(len(texts)), words)  # (W,) example of each word
        out = np.empty(int(ngrams.sum()), dtype=np.int64)
        positions = np.arange(len(flat))
        out[positions + base[example]] = unigrams.buckets[word_ids]
        remaining = (word_start + words)[example] - positions  # words from here to the example's end
        ids, prefix_spaced = word_ids, unigrams.spaced_array
        for size in range(2, self.n + 1):
            base = base + counts[size - 2]
            starts = np.flatnonzero(remaining >= size)  # word positions where a size-gram starts
            level = self._levels[size - 1]
            codes = (ids[starts] << _SHIFT) | word_ids[starts + size - 1]  # (grams,)
            gram_ids, gram_buckets = level.lookup(codes, prefix_spaced, unigrams, self.buckets, self.hash)
            out[starts + base[example[starts]]] = gram_buckets
            if size < self.n:
                grams = np.full(len(flat), -1, dtype=np.int64)
                grams[starts] = gram_ids
                ids, prefix_spaced = grams, level.spaced_array
        return out, ngrams, words

    def ids(self, text: str) -> tuple[np.ndarray, int]:
        """(bucket ids of every unigram then every 2..n-gram, number of words) of one example."""
        ids, _, words = self.ids_batch([text])
        return ids, int(words[0])

    def counts(self, text: str) -> np.ndarray:
        """The dense (buckets,) int64 feature vector of one example."""
        ids, _ = self.ids(text)
        return np.bincount(ids, minlength=self.buckets)
