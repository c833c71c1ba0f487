"""DSIR: the reference package (`data-selection` 1.0, HashedNgramDSIR, ``num_proc`` processes) against
`divreg select` in `compat` and `fast` modes (``workers`` processes), each in its own subprocess, at
1 and 2 processes each (``--processes``), on a synthetic corpus generated here. Two corpora:

- ``--corpus topics``: documents of 100-300 words from 5 topics of 400 words each (half the words
  from 10 common ones) over a 20,000-word vocabulary: about 2,000 distinct words in use, so nearly
  every n-gram repeats (the n-gram cache almost always hits: the favourable case);
- ``--corpus zipf``: documents of 100-250 words drawn from a Zipfian (exponent 1) over 30,000
  random words (letters, 2-12 each), half from a background ranking shared by all and half from a
  ranking of the document's topic (5 topics): a realistic long tail of rare words and bigrams.

The target is 2000 documents of topic 0. Same settings (B = 10,000, unigrams + bigrams, fit on all
tokens, deterministic top-k of 1%). Phases: fit (featurize and count target and raw), weights
(every raw document), resample + write; peak memory (max RSS of the subprocess and of its largest
child); whether the selection is the reference's; the KL reduction.

    .venv/bin/python benchmarks/dsir.py --docs 200000 --processes 2            # topics (about 6 minutes)
    .venv/bin/python benchmarks/dsir.py --docs 20000 --corpus zipf --repeats 3  # zipf (about 6 minutes)

With ``--repeats R`` the variants run interleaved R times and the table shows medians (the machine
is shared). The results also go to ``outputs/benchmarks/dsir-<corpus>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time


def make_zipf_corpus(folder: str, docs: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, rng.integers(2, 13))) for _ in range(31000)})[:30000]
    words = np.array(rng.permutation(words))
    cumulative = np.cumsum(1.0 / np.arange(1, len(words) + 1))
    cumulative /= cumulative[-1]  # the Zipfian's CDF over ranks
    background, topics = rng.permutation(len(words)), [rng.permutation(len(words)) for _ in range(5)]

    def document(topic: int) -> str:
        length = int(rng.integers(100, 251))
        ranks = np.minimum(np.searchsorted(cumulative, rng.random(length)), len(words) - 1)  # (length,) Zipfian
        own = rng.random(length) < 0.5
        return " ".join(words[np.where(own, topics[topic][ranks], background[ranks])])

    _write_corpus(folder, docs, document, lambda: int(rng.integers(5)))


def make_corpus(folder: str, docs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(20000)]
    topics = [rng.sample(vocabulary, 400) for _ in range(5)]
    common = ["the", "a", "of", "and", "to", "in", "is", ",", ".", "it's"]

    def document(topic: int) -> str:
        return " ".join(rng.choice(topics[topic]) if rng.random() < 0.5 else rng.choice(common)
                        for _ in range(rng.randint(100, 300)))

    _write_corpus(folder, docs, document, lambda: rng.randrange(5))


def _write_corpus(folder: str, docs: int, document, topic) -> None:
    """raw.jsonl: ``docs`` documents of random topics; target.jsonl: 2000 of topic 0."""
    with open(os.path.join(folder, "raw.jsonl"), "w") as handle:
        for i in range(docs):
            handle.write(json.dumps({"text": document(topic()), "id": i}) + "\n")
    with open(os.path.join(folder, "target.jsonl"), "w") as handle:
        for i in range(2000):
            handle.write(json.dumps({"text": document(0), "id": i}) + "\n")


def run_variant(variant: str, folder: str, k: int, processes: int) -> dict:
    """In this (sub)process: the variant's phases; returns seconds per phase and the selected ids."""
    raw, target = os.path.join(folder, "raw.jsonl"), os.path.join(folder, "target.jsonl")
    times = {}
    if variant == "reference":
        import numpy as np
        from data_selection import HashedNgramDSIR

        started = time.perf_counter()
        dsir = HashedNgramDSIR([raw], [target], tempfile.mkdtemp(dir=folder, prefix="cache-"),
                               num_proc=processes)  # a fresh cache each run: nothing reused between repeats
        dsir.fit_importance_estimator(num_tokens_to_fit="all")
        times["fit"] = time.perf_counter() - started
        started = time.perf_counter()
        dsir.compute_importance_weights()
        times["weights"] = time.perf_counter() - started
        started = time.perf_counter()
        np.random.seed(0)
        run = tempfile.mkdtemp(dir=folder, prefix="reference-")  # the reference moves its cache to out (not yet there)
        out = os.path.join(run, "out")
        dsir.resample(out, num_to_sample=k, cache_dir=os.path.join(run, "out_cache"), top_k=True)
        times["resample"] = time.perf_counter() - started
        ids = sorted(json.loads(line)["id"] for name in os.listdir(out) if os.path.isfile(os.path.join(out, name))
                     for line in open(os.path.join(out, name)))
        kl = None
    else:  # the whole command: featurize, fit, weights, resample, write
        from divreg.recipes.selection import SelectConfig, run

        report = run(SelectConfig(raw=[raw], target=[target], num_to_sample=k, mode=variant, top_k=True,
                                  workers=processes, random_baselines=0,
                                  output_dir=os.path.join(folder, f"out-{variant}-{processes}"), overwrite=True))
        times = dict(report["seconds"])
        times["resample"] += times.pop("write")
        kl = report["kl_reduction"]
        out = os.path.join(folder, f"out-{variant}-{processes}")
        ids = sorted(json.loads(line)["id"] for name in sorted(os.listdir(out)) if name.startswith("selected")
                     for line in open(os.path.join(out, name)))
    times["total"] = sum(times.values())
    return {"seconds": times, "ids": ids, "kl_reduction": kl if variant != "reference" else None, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--corpus", choices=("topics", "zipf"), default="topics")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variant")  # internal: run one variant in this process
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.folder, args.docs // 100, args.processes[0])))
        return
    import numpy as np

    folder = tempfile.mkdtemp(prefix="dsir-bench-")
    (make_zipf_corpus if args.corpus == "zipf" else make_corpus)(folder, args.docs)
    runs: dict = {}
    for _ in range(args.repeats):
        for processes in args.processes:
            for variant in ("reference", "compat", "fast"):
                out = subprocess.run([sys.executable, __file__, "--variant", variant, "--folder", folder, "--docs",
                                      str(args.docs), "--processes", str(processes)], capture_output=True, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "2"})
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                runs.setdefault((processes, variant), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.corpus} corpus: {args.docs} raw documents, 2000 target documents, 1% selected (deterministic "
          f"top-k), medians of {args.repeats} run(s)\n")
    print("| processes | variant | fit s | weights s | resample + write s | total s | vs reference | peak MB "
          "| same selection | KL reduction |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (processes, variant), results in runs.items():
        seconds = {key: float(np.median([r["seconds"][key] for r in results])) for key in results[0]["seconds"]}
        reference = runs[(processes, "reference")]
        base = float(np.median([r["seconds"]["total"] for r in reference]))
        same = all(r["ids"] == reference[0]["ids"] for r in results + reference)
        kl = results[0]["kl_reduction"]
        peak = float(np.median([r["max_rss_mb"] for r in results]))
        rows.append({"processes": processes, "variant": variant, "seconds": seconds, "speedup": base / seconds["total"],
                     "peak_mb": peak, "same_selection": same, "kl_reduction": kl, "runs": len(results)})
        print(f"| {processes} | {variant} | {seconds['fit']:.1f} | {seconds['weights']:.1f} | {seconds['resample']:.2f} "
              f"| {seconds['total']:.1f} | {base / seconds['total']:.2f}x | {peak:.0f} | {'yes' if same else 'no'} | "
              f"{'-' if kl is None else format(kl, '.3f')} |")
    os.makedirs(os.path.join("outputs", "benchmarks"), exist_ok=True)
    with open(os.path.join("outputs", "benchmarks", f"dsir-{args.corpus}.json"), "w") as f:
        json.dump({"docs": args.docs, "corpus": args.corpus, "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
