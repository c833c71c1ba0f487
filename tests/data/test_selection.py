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

from divreg.data.selection import (NgramHasher, bag_of_ngrams, gumbel_top_k_probability, kl_reduction,
                                    log_importance_weights, log_ratio, resample, virtual_shard_order)

TOPICS = [["model", "training", "loss", "gradient", "layer", "token"], ["river", "mountain", "forest", "rain", "valley"],
          ["market", "price", "trade", "bank", "stock", "Tax"], ["goal", "match", "team", "score", "league"]]
COMMON = ["the", "a", "of", "and", "to", "in", "is", ",", ".", "it's", "was"]


def corpus(count: int, seed: int, topics=(0, 1, 2, 3)) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        topic = TOPICS[rng.choice(topics)]
        length = rng.choice([40, 120, 150, 200])  # some below the 100-word minimum
        docs.append({"text": " ".join(rng.choice(topic) if rng.random() < 0.4 else rng.choice(COMMON)
                                      for _ in range(length)), "id": len(docs)})
    return docs


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    pytest.importorskip("data_selection")
    from data_selection import HashedNgramDSIR

    folder = tmp_path_factory.mktemp("dsir")
    raw, target = corpus(300, 0), corpus(40, 1, topics=(0,))
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
    with pytest.raises(ValueError, match="the target has no n-grams"):
        log_ratio(np.zeros(10000, dtype=np.int64), np.ones(10000, dtype=np.int64))
    with pytest.raises(ValueError, match=r"num_to_sample=5 must be in \[1, 2\]"):
        resample(np.zeros(3), np.array([True, True, False]), 5)
    with pytest.raises(ValueError, match="hash must be one of"):
        NgramHasher(hash="md5")
    assert hasher.words("Hello, World! it's") == ["hello", ",", "world", "!", "it", "'", "s"]


def test_select_command_writes_shards_report_and_plot(tmp_path):
    """`divreg select` on JSONL (one raw file gzip-compressed): the selection equals the library's,
    the output folder appears only when complete, the report's KL reduction beats random ones;
    clear errors."""
    import gzip

    from divreg.config import load_config
    from divreg.recipes.selection import SelectConfig, run

    raw, target = corpus(300, 4), corpus(30, 5, topics=(2,))
    _write(tmp_path / "raw1.jsonl", raw[:150])
    with gzip.open(tmp_path / "raw2.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(d) + "\n" for d in raw[150:]))
    _write(tmp_path / "target.jsonl", target)
    overrides = [f"raw=[{tmp_path / 'raw1.jsonl'},{tmp_path / 'raw2.jsonl.gz'}]", f"target=[{tmp_path / 'target.jsonl'}]",
                 "num_to_sample=30", "shard_size=20", f"output_dir={tmp_path / 'out'}", "seed=3"]
    report = run(load_config(SelectConfig, None, overrides))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["report.json", "selected-00000.jsonl", "selected-00001.jsonl", "weights.png"]
    ids = [json.loads(line)["id"] for name in files if name.startswith("selected")
           for line in (tmp_path / "out" / name).read_text().splitlines()]
    hasher = NgramHasher()
    counts = [bag_of_ngrams((d["text"] for d in docs), hasher) for docs in (target, raw)]
    weights, lengths = log_importance_weights((d["text"] for d in raw), hasher, log_ratio(*counts))
    assert ids == [raw[i]["id"] for i in resample(weights, lengths >= 100, 30, seed=3)]
    assert report["selected"] == 30 and report["kl_reduction"] > report["random_kl_reduction"]["mean"] + 0.3
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kl_reduction"] == report["kl_reduction"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".select-")]  # no staging folder left
    with pytest.raises(ValueError, match="already holds a selection"):
        run(load_config(SelectConfig, None, overrides))
    with pytest.raises(ValueError, match="exceeds the"):
        run(load_config(SelectConfig, None, overrides[:2] + ["num_to_sample=1000", f"output_dir={tmp_path / 'o2'}"]))
    with pytest.raises(ValueError, match="no string field 'body'"):
        run(load_config(SelectConfig, None, overrides[:2] + ["num_to_sample=5", "text_field=body",
                                                             f"output_dir={tmp_path / 'o3'}"]))
    with pytest.raises(ValueError, match="no such file or folder"):
        run(load_config(SelectConfig, None, ["raw=[missing.jsonl]", overrides[1], "num_to_sample=5",
                                             f"output_dir={tmp_path / 'o4'}"]))
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
