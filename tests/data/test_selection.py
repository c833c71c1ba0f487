"""DSIR's compat mode against the reference package (`data-selection`, HashedNgramDSIR) on a small
generated corpus: identical hashed counts, identical log-ratios, weights to 1e-9, identical
deterministic top-k and identical Gumbel top-k for the same numpy seed; Gumbel top-k inclusion
frequencies against exact without-replacement probabilities; the KL reduction of a target-topic
selection against random ones; clear errors."""

import itertools
import json
import random

import numpy as np
import pytest

from divreg.data.selection import (Features, NgramHasher, bag_of_ngrams, featurize, fit_mask, gumbel_top_k_probability,
                                    kl_reduction, log_importance_weights, log_ratio, reference_order, resample,
                                    resample_targets, split_counts, virtual_shard_order)

TOPICS = [["model", "training", "loss", "gradient", "layer", "token"], ["river", "mountain", "forest", "rain", "valley"],
          ["market", "price", "trade", "bank", "stock", "Tax"], ["goal", "match", "team", "score", "league"]]
COMMON = ["the", "a", "of", "and", "to", "in", "is", ",", ".", "it's", "was"]
UNICODE = ["cafe\u0301", "mc²", "हिन्दी", "İstanbul"]  # where the regex engines differ: NLTK 3.10 uses `regex`


def corpus(count: int, seed: int, topics=(0, 1, 2, 3), unicode: bool = False) -> list[dict]:
    rng = random.Random(seed)
    common = COMMON + UNICODE if unicode else COMMON
    docs = []
    for _ in range(count):
        topic = TOPICS[rng.choice(topics)]
        length = rng.choice([40, 120, 150, 200])  # some below the 100-word minimum
        docs.append({"text": " ".join(rng.choice(topic) if rng.random() < 0.4 else rng.choice(common)
                                      for _ in range(length)), "id": len(docs)})
    return docs


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    pytest.importorskip("data_selection")
    from data_selection import HashedNgramDSIR

    folder = tmp_path_factory.mktemp("dsir")
    raw, target = corpus(300, 0, unicode=True), corpus(40, 1, topics=(0,), unicode=True)
    _write(folder / "raw.jsonl", raw)
    _write(folder / "target.jsonl", target)
    dsir = HashedNgramDSIR([str(folder / "raw.jsonl")], [str(folder / "target.jsonl")], str(folder / "cache"),
                           num_proc=2)
    dsir.fit_importance_estimator(num_tokens_to_fit="all")
    dsir.compute_importance_weights()
    weights = np.concatenate([np.load(folder / "cache" / "log_importance_weights" / f"{i}.npy") for i in (0, 1)])
    selections = {}
    for name, top_k, seed in (("top_k", True, 0), ("gumbel", False, 123)):
        np.random.seed(seed)
        dsir.resample(str(folder / name), num_to_sample=50, cache_dir=str(folder / f"{name}_cache"), top_k=top_k)
        selections[name] = {json.loads(line)["id"] for i in (0, 1)
                            for line in (folder / name / f"{i}.jsonl").read_text().splitlines()}
    return {"raw": raw, "target": target, "dsir": dsir, "weights": weights, "selections": selections}


def test_compat_mode_equals_the_reference_package(reference_run):
    raw, target, dsir = reference_run["raw"], reference_run["target"], reference_run["dsir"]
    hasher = NgramHasher(10000, 2, "sha256")
    raw_counts = bag_of_ngrams((d["text"] for d in raw), hasher)
    target_counts = bag_of_ngrams((d["text"] for d in target), hasher)
    assert np.array_equal(raw_counts / raw_counts.sum(), dsir.raw_probs)  # identical hashed counts
    assert np.array_equal(target_counts / target_counts.sum(), dsir.target_probs)
    log_diff = log_ratio(target_counts, raw_counts)
    assert np.array_equal(log_diff, dsir.log_diff)
    weights, lengths = log_importance_weights((d["text"] for d in raw), hasher, log_diff)
    order = virtual_shard_order(len(raw), 2)  # the reference's 2 virtual shards, concatenated
    np.testing.assert_allclose(weights[order], reference_run["weights"], rtol=0, atol=1e-9)
    eligible = lengths >= 100
    for name, top_k, seed in (("top_k", True, 0), ("gumbel", False, 123)):
        chosen = resample(weights[order], eligible[order], 50, seed=seed, top_k=top_k)
        assert {raw[i]["id"] for i in order[chosen]} == reference_run["selections"][name], name


def test_gumbel_top_k_inclusion_matches_exact_without_replacement_probabilities():
    weights = np.array([0.5, 1.0, 2.0, 3.0, 0.25])
    log_weights = np.log(weights)
    counts = {}
    runs = 20000
    for seed in range(runs):
        key = tuple(resample(log_weights, np.ones(5, dtype=bool), 2, seed=seed).tolist())
        counts[key] = counts.get(key, 0) + 1
    for subset in itertools.combinations(range(5), 2):
        exact = gumbel_top_k_probability(weights, subset)
        se = (exact * (1 - exact) / runs) ** 0.5
        assert abs(counts.get(subset, 0) / runs - exact) <= 5 * se + 1e-12, (subset, exact)
    assert np.array_equal(resample(log_weights, np.ones(5, bool), 2, seed=7),
                          resample(log_weights, np.ones(5, bool), 2, seed=7))  # seeded: reproducible


def test_kl_reduction_of_the_target_topic_against_random_selections():
    raw, target = corpus(400, 2), corpus(40, 3, topics=(1,))
    hasher = NgramHasher(10000, 2, "blake2b")  # fast mode: other buckets, the same method
    raw_counts = bag_of_ngrams((d["text"] for d in raw), hasher)
    target_counts = bag_of_ngrams((d["text"] for d in target), hasher)
    weights, lengths = log_importance_weights((d["text"] for d in raw), hasher, log_ratio(target_counts, raw_counts))
    eligible = lengths >= 100

    def reduction(indices):
        return kl_reduction(target_counts, raw_counts,
                            bag_of_ngrams((raw[i]["text"] for i in indices), hasher))

    chosen = resample(weights, eligible, 40, seed=0)
    random_reductions = [reduction(np.random.RandomState(s).choice(np.where(eligible)[0], 40, replace=False))
                         for s in range(10)]
    assert reduction(chosen) > 0.5 and reduction(chosen) > max(random_reductions) + 0.3
    assert abs(np.mean(random_reductions)) < 0.1


def test_bad_input_is_a_clear_error():
    hasher = NgramHasher()
    with pytest.raises(ValueError, match="a target has no n-grams"):
        log_ratio(np.zeros(10000, dtype=np.int64), np.ones(10000, dtype=np.int64))
    with pytest.raises(ValueError, match=r"num_to_sample=5 must be in \[1, 2\]"):
        resample(np.zeros(3), np.array([True, True, False]), 5)
    with pytest.raises(ValueError, match="hash must be one of"):
        NgramHasher(hash="md5")
    assert hasher.words("Hello, World! it's") == ["hello", ",", "world", "!", "it", "'", "s"]
    with pytest.raises(ValueError, match="engine must be one of"):
        NgramHasher(engine="pcre")


def test_tokenizer_is_nltks_on_unicode():
    """NLTK's WordPunctTokenizer (the reference's tokenizer) compiles its pattern with the `regex`
    engine; the default engine agrees with it where the standard library's `re` does not."""
    nltk = pytest.importorskip("nltk.tokenize")
    texts = ["हिन्दी भाषा में लिखा गया पाठ", "cafe\u0301 mc² İstanbul ½ naïve", "Hello, World! it's 3.5%"]
    for text in texts:
        assert NgramHasher().words(text) == nltk.WordPunctTokenizer().tokenize(text.lower())
    assert NgramHasher(engine="re").words(texts[0]) != NgramHasher().words(texts[0])


def _reference_ids(text: str, n: int, buckets: int, hash: str) -> list[int]:
    """The reference's features by its own definition: every n-gram's text hashed on its own."""
    import hashlib
    import re

    words = re.findall(r"\w+|[^\w\s]+", text.lower())
    grams = list(words) + [" ".join(words[j:j + k]) for k in range(2, n + 1) for j in range(len(words) - k + 1)]
    if hash == "sha256":
        return [int(hashlib.sha256(g.encode("utf-8")).hexdigest(), 16) % buckets for g in grams]
    return [int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest(), "big") % buckets for g in grams]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("hash", ["sha256", "blake2b"])
def test_batched_hasher_equals_hashing_every_ngram_text(n, hash):
    """Word ids, integer n-gram codes, the numpy hash table, batches and cache resets change
    nothing: each example's bucket ids (in the reference's order) are those of hashing every
    n-gram's text; a prime B exercises the vectorized remainder."""
    texts = [d["text"] for d in corpus(120, 9)] + ["", "a", "Hello, World! it's", "x y", "Ünïcode wörds, ÜNÏCODE"]
    hasher = NgramHasher(10007, n, hash, cache_size=3000)  # small: the interned n-grams are dropped several times
    for _ in range(2):  # cold, then warm caches
        for start in range(0, len(texts), 37):
            batch = texts[start:start + 37]
            ids, ngrams, words = hasher.ids_batch(batch)
            offsets = np.concatenate([[0], np.cumsum(ngrams)])
            for i, text in enumerate(batch):
                assert ids[offsets[i]:offsets[i + 1]].tolist() == _reference_ids(text, n, 10007, hash)
                assert words[i] == len(hasher.words(text))
    import hashlib

    big = 2**61 - 1  # past the vectorized remainder's range: the Python fallback
    for modulus in (big, 10007):
        expected = int(hashlib.sha256("big modulus".encode()).hexdigest(), 16) % modulus
        assert NgramHasher(modulus, 2).bucket("big modulus") == expected


def _engine_ids(text: str, n: int, buckets: int, pattern) -> tuple[list[int], int]:
    """Bucket ids by the reference's definition, tokenized by the hasher's own engine's pattern."""
    import hashlib

    words = pattern.findall(text.lower())
    grams = list(words) + [" ".join(words[j:j + k]) for k in range(2, n + 1) for j in range(len(words) - k + 1)]
    return [int(hashlib.sha256(g.encode("utf-8")).hexdigest(), 16) % buckets for g in grams], len(words)


def _adversarial_text(rng: random.Random) -> str:
    pieces = ["a", "b", "Z", "_", "9", " ", "  ", "\n", "\t", "\x1c", "\x1f", "\x00", "\x7f", ".", ",", "!?",
              "it's", "é", "ß", "İ", "Σ", "x" * 8, "y" * 9, "abcdefghijklmnop", "abcdefghijklmnopq", "q" * 40,
              "ab" * 7, "\r\n", "\x0b", "\x0c", "--", "..."]
    mode = rng.random()
    if mode < 0.3:  # any ASCII character, control characters included
        return "".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 60)))
    if mode < 0.6:  # tokens at the 8- and 16-byte key boundaries, separators the engines may disagree on
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 20))) for _ in range(rng.randint(0, 30))]
    return rng.choice([" ", "  ", ", ", "\n"]).join(words)


@pytest.mark.parametrize("engine", ["regex", "re"])
def test_numpy_tokenizer_equals_the_engines_pattern_on_adversarial_text(engine):
    """The numpy tokenizer of ASCII batches (byte classes, exact 16-byte keys, the open-addressing
    word table) gives the buckets of the engine's own ``findall`` on every text: control
    characters, words of 8/9/16/17+ bytes, mixed ASCII and non-ASCII batches, cache resets."""
    from divreg.data.selection._ngrams import WORDPUNCT, WORDPUNCT_RE

    pattern = WORDPUNCT if engine == "regex" else WORDPUNCT_RE
    rng = random.Random(0)
    for n in (1, 2, 3):
        hasher = NgramHasher(10007, n, "sha256", engine=engine, cache_size=5000)
        for _ in range(40):
            batch = [_adversarial_text(rng) for _ in range(rng.randint(1, 40))]
            ids, ngrams, words = hasher.ids_batch(batch)
            offsets = np.concatenate([[0], np.cumsum(ngrams)])
            for i, text in enumerate(batch):
                expected, count = _engine_ids(text, n, 10007, pattern)
                assert ids[offsets[i]:offsets[i + 1]].tolist() == expected, repr(text)
                assert words[i] == count, repr(text)


def test_word_key_collisions_fall_back_to_exact_strings(monkeypatch):
    """When two different short words share the 64-bit mix of their keys, the hasher notices (it
    compares the keys) and takes the string path: the buckets stay exact."""
    from divreg.data.selection import _ngrams

    fallbacks = []
    lookup_keys = _ngrams._Words.lookup_keys

    def counted(self, *args, **kwargs):
        found = lookup_keys(self, *args, **kwargs)
        fallbacks.append(found is None)
        return found

    monkeypatch.setattr(_ngrams._Words, "lookup_keys", counted)
    monkeypatch.setattr(_ngrams, "_mix", lambda first, last, length: length.astype(np.uint64) % np.uint64(3))
    hasher = NgramHasher(10007, 2)
    for batch in (["hello world foo bar hello", "foo, bar! baz", "x" * 20 + " y", "ab ba abc cab"],
                  ["foo hello zzz", "bar baz qux"], ["hello"]):
        ids, ngrams, _ = hasher.ids_batch(batch)
        offsets = np.concatenate([[0], np.cumsum(ngrams)])
        for i, text in enumerate(batch):
            assert ids[offsets[i]:offsets[i + 1]].tolist() == _engine_ids(text, 2, 10007, _ngrams.WORDPUNCT)[0]
    assert any(fallbacks)  # the collisions were seen


def test_features_weights_counts_and_spill_round_trip(tmp_path):
    texts = [d["text"] for d in corpus(50, 10)]
    hasher = NgramHasher(1000, 2)
    features = featurize(texts, hasher, batch_size=7)
    log_diff = np.random.RandomState(0).randn(2, 1000)  # two targets
    dense = np.stack([hasher.counts(t) for t in texts])  # (N, B)
    assert np.array_equal(features.log_weights(log_diff), np.stack([np.dot(log_diff, row) for row in dense]))
    mask = np.arange(50) % 3 == 0
    assert np.array_equal(features.counts(mask), dense[mask].sum(0)) and np.array_equal(features.counts(), dense.sum(0))
    features.save(str(tmp_path / "f.npz"))
    loaded = Features.load(str(tmp_path / "f.npz"))
    assert features.ids.dtype == np.uint16 and np.array_equal(loaded.ids, features.ids)
    assert np.array_equal(loaded.ngrams, features.ngrams) and np.array_equal(loaded.words, features.words)


@pytest.fixture(scope="module")
def reference_budget_run(tmp_path_factory):
    """The reference with num_proc=2, a token budget that binds for raw and targets, and two
    separate targets with proportions."""
    pytest.importorskip("data_selection")
    from data_selection import HashedNgramDSIR

    folder = tmp_path_factory.mktemp("dsir-budget")
    raw, targets = corpus(300, 11, unicode=True), [corpus(40, 12, topics=(0,), unicode=True),
                                                     corpus(40, 13, topics=(3,), unicode=True)]
    _write(folder / "raw.jsonl", raw)
    for i, docs in enumerate(targets):
        _write(folder / f"target{i}.jsonl", docs)
    dsir = HashedNgramDSIR([str(folder / "raw.jsonl")], [str(folder / f"target{i}.jsonl") for i in (0, 1)],
                           str(folder / "cache"), num_proc=2, separate_targets=True, target_proportions=[0.7, 0.3])
    dsir.fit_importance_estimator(num_tokens_to_fit=8000)
    dsir.compute_importance_weights()
    selections = {}
    for name, top_k, seed in (("top_k", True, 0), ("gumbel", False, 5)):
        np.random.seed(seed)
        dsir.resample(str(folder / name), num_to_sample=50, cache_dir=str(folder / f"{name}_cache"), top_k=top_k)
        selections[name] = sorted(json.loads(line)["id"] for i in (0, 1)
                                  for line in (folder / name / f"{i}.jsonl").read_text().splitlines())
    return {"folder": folder, "raw": raw, "targets": targets, "dsir": dsir, "selections": selections}


def test_token_budget_and_separate_targets_equal_the_reference(reference_budget_run):
    raw, targets, dsir = reference_budget_run["raw"], reference_budget_run["targets"], reference_budget_run["dsir"]
    hasher = NgramHasher()
    features = featurize((d["text"] for d in raw), hasher)
    mask = fit_mask(features.ngrams, [len(raw)], 8000, num_proc=2)
    assert 0 < mask.sum() < len(raw)  # the budget binds
    raw_counts = features.counts(mask)
    assert np.array_equal(raw_counts / raw_counts.sum(), dsir.raw_probs)
    target_counts = []
    for docs in targets:
        target_features = featurize((d["text"] for d in docs), hasher)
        target_mask = fit_mask(target_features.ngrams, [len(docs)], 8000, num_proc=2)
        assert target_mask.sum() < len(docs)
        target_counts.append(target_features.counts(target_mask))
    target_counts = np.stack(target_counts)
    assert np.array_equal(target_counts / target_counts.sum(1, keepdims=True), dsir.target_probs)
    log_diff = log_ratio(target_counts, raw_counts)
    assert np.array_equal(log_diff, dsir.log_diff)
    order = reference_order([len(raw)], 2)
    weights = features.log_weights(log_diff)  # (N, 2)
    eligible = features.words >= 100
    shares = split_counts(50, [0.7, 0.3])
    assert shares == [35, 15]
    for name, top_k, seed in (("top_k", True, 0), ("gumbel", False, 5)):
        chosen = resample_targets(weights[order], eligible[order], shares, seed=seed, top_k=top_k)
        assert [len(c) for c in chosen] == shares and not set(chosen[0]) & set(chosen[1])
        ids = sorted(raw[i]["id"] for c in chosen for i in order[c])
        assert ids == reference_budget_run["selections"][name], name


def test_reference_order_and_budget_split_over_several_files():
    assert reference_order([3, 4], 1).tolist() == list(range(7))
    assert reference_order([5], 2).tolist() == [0, 2, 4, 1, 3]
    assert reference_order([3, 4], 3).tolist() == [0, 2, 1, 3, 4, 5, 6]  # 2 virtual shards for the first file, 1
    mask = fit_mask(np.array([5, 5, 5, 5, 5, 5, 5]), [3, 4], 10, num_proc=3)  # 3 shards: 10 // 3 n-grams each
    assert mask.tolist() == [True, True, False, True, False, False, False]  # each shard stops after its first example
    assert fit_mask(np.array([2, 2, 2]), [3], 4, num_proc=1).tolist() == [True, True, True]  # 0, 2 <= 4; 4 <= 4
    assert fit_mask(np.array([2, 2, 2]), [3], None).all()


def test_source_allocation_rules_and_lasso_against_the_closed_form():
    """The L1 rule allocates in proportion to |nu|, the L2 rule to nu^2, with exact integer totals;
    the Lasso estimate equals the closed form on orthonormal heads (soft thresholding) and the
    L2 estimate is the minimum-norm solution."""
    from divreg.data.selection import allocate_source_samples, task_relevance

    nu = np.array([0.5, -1.5, 0.0, 1.0])
    counts = allocate_source_samples(nu, 3000, "lasso")
    assert counts.sum() == 3000 and counts.tolist() == [500, 1500, 0, 1000]
    assert allocate_source_samples(nu, 3500, "l2").tolist() == [250, 2250, 0, 1000]
    assert allocate_source_samples(nu, 10, "uniform", floor=1).sum() == 10
    assert allocate_source_samples(nu, 13, "lasso", floor=2).min() == 2
    # orthonormal heads (k = M = 4): the Lasso of 1/(2k)||W nu - w0||^2 + alpha ||nu||_1 is
    # soft-thresholding of W^T w0 at k * alpha
    rng = np.random.default_rng(0)
    heads = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    target = heads @ np.array([2.0, -0.05, 0.0, 1.0])
    alpha = 0.1 / 4
    projected = heads.T @ target
    expected = np.sign(projected) * np.maximum(np.abs(projected) - 4 * alpha, 0)
    np.testing.assert_allclose(task_relevance(heads, target, "lasso", alpha=alpha), expected, atol=1e-8)
    wide = rng.standard_normal((3, 6))
    w0 = rng.standard_normal(3)
    l2 = task_relevance(wide, w0, "l2")
    np.testing.assert_allclose(wide @ l2, w0, atol=1e-10)
    np.testing.assert_allclose(l2, wide.T @ np.linalg.solve(wide @ wide.T, w0), atol=1e-10)  # minimum norm
    with pytest.raises(ValueError, match="rule must be one of"):
        allocate_source_samples(nu, 10, "l3")
    with pytest.raises(ValueError, match="floor"):
        allocate_source_samples(nu, 10, "lasso", floor=3)
