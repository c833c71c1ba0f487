"""Data selection by importance resampling (``divreg select``, DSIR: Xie et al. 2023, arXiv
2302.03169): pick from a raw corpus the examples whose hashed n-gram distribution matches a
target corpus (see :mod:`divreg.data` ``_selection`` for the method and its compatibility with
the reference package).

Reads JSONL (also ``.jsonl.gz`` and ``.jsonl.zst``), plain text (one example per line) or a
``datasets`` folder, streaming (memory: the counts and one weight per raw example). Writes, into a
temporary folder renamed to ``output_dir`` at the end (an interrupted run leaves nothing that
looks complete): ``selected-00000.jsonl``... (the selected examples as JSON lines, their original
records), ``report.json`` (sizes, the KL reduction of the selection and of random selections of the
same size, weight quantiles, seconds per phase) and ``weights.png``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from .._table import format_table
from ..data.selection import (NgramHasher, bag_of_ngrams, kl_reduction, log_importance_weights, log_ratio,
                               resample)


@dataclass
class SelectConfig:
    raw: list[str] = field(default_factory=list)  # raw corpus: .jsonl(.gz/.zst) files, .txt files or datasets folders
    target: list[str] = field(default_factory=list)  # target corpus, same formats
    text_field: str = "text"  # the field of a JSON record (or datasets column) that holds the text
    num_to_sample: int = 0  # examples to select
    mode: str = "compat"  # "compat": the reference's sha256 buckets; "fast": blake2b buckets (other buckets, same method)
    buckets: int = 10000  # hashed n-gram buckets (B)
    ngrams: int = 2  # unigrams plus 2..n-grams
    min_example_length: int = 100  # words; shorter raw examples are never selected
    target_smoothing: float = 0.0  # Laplace pseudo-count added to every target bucket (0: as the reference)
    top_k: bool = False  # true: the top k weights (deterministic); false: Gumbel top-k (sampling without replacement)
    seed: int = 0  # the Gumbel noise's numpy seed (the reference's selection after np.random.seed(seed))
    random_baselines: int = 3  # random selections of the same size whose KL reduction is reported
    shard_size: int = 100000  # selected examples per output file
    output_dir: str = "outputs/select"
    overwrite: bool = False

    def __post_init__(self):
        if not self.raw or not self.target:
            raise ValueError("give raw=[files...] and target=[files...] (JSONL, .txt or datasets folders)")
        if self.num_to_sample < 1:
            raise ValueError(f"num_to_sample must be >= 1, got {self.num_to_sample}")
        if self.mode not in ("compat", "fast"):
            raise ValueError(f"mode must be 'compat' or 'fast', got {self.mode!r}")
        if self.buckets < 1 or self.ngrams < 1 or self.min_example_length < 0 or self.target_smoothing < 0:
            raise ValueError("buckets and ngrams must be >= 1, min_example_length and target_smoothing >= 0")
        if self.random_baselines < 0 or self.shard_size < 1:
            raise ValueError("random_baselines must be >= 0 and shard_size >= 1")


def _open(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        import io

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
    return open(path, encoding="utf-8")


def iterate_records(path: str, text_field: str) -> Iterator[tuple[str, dict]]:
    """(text, record) of every example of ``path``, streaming; a clear error for a missing file, a
    line that is not JSON, or a record without ``text_field``."""
    if os.path.isdir(path):
        import datasets

        loaded = datasets.load_from_disk(path)
        loaded = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        if text_field not in loaded.column_names:
            raise ValueError(f"{path}: no column {text_field!r} (columns: {loaded.column_names}); set text_field")
        for record in loaded:
            yield record[text_field], record
        return
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file or folder")
    plain = path.endswith(".txt") or path.endswith(".txt.gz") or path.endswith(".txt.zst")
    with _open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if plain:
                yield line.rstrip("\n"), {"text": line.rstrip("\n")}
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}, line {number}: no string field {text_field!r}; set text_field")
            yield record[text_field], record


def _texts(paths: list[str], text_field: str, desc: str) -> Iterator[str]:
    for path in paths:
        for text, _ in tqdm(iterate_records(path, text_field), desc=f"{desc} {os.path.basename(path)}", leave=False):
            yield text


def run(config: SelectConfig) -> dict:
    if os.path.exists(config.output_dir) and os.listdir(config.output_dir) and not config.overwrite:
        raise ValueError(f"{config.output_dir} already holds a selection: choose another output_dir or overwrite=true")
    times, started = {}, time.perf_counter()
    hasher = NgramHasher(config.buckets, config.ngrams, "sha256" if config.mode == "compat" else "blake2b")
    target_counts = bag_of_ngrams(_texts(config.target, config.text_field, "target"), hasher)
    if target_counts.sum() == 0:
        raise ValueError("the target corpus holds no text: give target examples")
    raw_counts = bag_of_ngrams(_texts(config.raw, config.text_field, "raw: fit"), hasher)
    times["fit"] = time.perf_counter() - started
    log_diff = log_ratio(target_counts, raw_counts, config.target_smoothing)
    started = time.perf_counter()
    weights, lengths = log_importance_weights(_texts(config.raw, config.text_field, "raw: weights"), hasher, log_diff)
    times["weights"] = time.perf_counter() - started
    started = time.perf_counter()
    eligible = lengths >= config.min_example_length
    if config.num_to_sample > int(eligible.sum()):
        raise ValueError(f"num_to_sample={config.num_to_sample} exceeds the {int(eligible.sum())} raw examples with at "
                         f"least min_example_length={config.min_example_length} words")
    chosen = resample(weights, eligible, config.num_to_sample, seed=config.seed, top_k=config.top_k)
    baselines = [np.sort(np.random.RandomState(config.seed + 1 + i).choice(np.where(eligible)[0], config.num_to_sample,
                                                                           replace=False))
                 for i in range(config.random_baselines)]
    times["resample"] = time.perf_counter() - started
    started = time.perf_counter()
    parent = os.path.dirname(os.path.abspath(config.output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".select-", dir=parent)
    try:
        selected_mask = np.zeros(len(weights), dtype=bool)
        selected_mask[chosen] = True
        baseline_masks = []
        for indices in baselines:
            mask = np.zeros(len(weights), dtype=bool)
            mask[indices] = True
            baseline_masks.append(mask)
        selected_counts = np.zeros(config.buckets, dtype=np.int64)
        baseline_counts = [np.zeros(config.buckets, dtype=np.int64) for _ in baselines]
        written, handle, index = 0, None, 0
        for path in config.raw:
            for text, record in tqdm(iterate_records(path, config.text_field), desc="raw: write", leave=False):
                if selected_mask[index] or any(mask[index] for mask in baseline_masks):
                    counts = hasher.counts(text)
                    if selected_mask[index]:
                        selected_counts += counts
                        if written % config.shard_size == 0:
                            if handle is not None:
                                handle.close()
                            handle = open(os.path.join(staging, f"selected-{written // config.shard_size:05d}.jsonl"),
                                          "w", encoding="utf-8")
                        handle.write(json.dumps(record) + "\n")
                        written += 1
                    for mask, total in zip(baseline_masks, baseline_counts):
                        if mask[index]:
                            total += counts
                index += 1
        if handle is not None:
            handle.close()
        times["write"] = time.perf_counter() - started
        reductions = [kl_reduction(target_counts, raw_counts, counts) for counts in baseline_counts]
        report = {"raw_examples": int(len(weights)), "eligible_examples": int(eligible.sum()), "selected": int(written),
                  "mode": config.mode, "kl_reduction": kl_reduction(target_counts, raw_counts, selected_counts),
                  "random_kl_reduction": {"values": reductions,
                                          "mean": float(np.mean(reductions)) if reductions else None,
                                          "std": float(np.std(reductions)) if reductions else None},
                  "log_weight_quantiles": {str(q): float(np.quantile(weights[eligible], q))
                                           for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)},
                  "seconds": times}
        with open(os.path.join(staging, "report.json"), "w") as out:
            json.dump(report, out, indent=2)
        _plot(weights, eligible, selected_mask, os.path.join(staging, "weights.png"))
        if os.path.exists(config.output_dir):
            shutil.rmtree(config.output_dir)
        os.rename(staging, config.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(format_table([{"selected": report["selected"], "of eligible": report["eligible_examples"],
                         "KL reduction": report["kl_reduction"],
                         "random selections": f"{report['random_kl_reduction']['mean']:.4f} +- "
                                              f"{report['random_kl_reduction']['std']:.4f}" if reductions else "-"}],
                       ["selected", "of eligible", "KL reduction", "random selections"]))
    print(f"outputs in {config.output_dir}")
    return report


def _plot(weights: np.ndarray, eligible: np.ndarray, selected: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    rest = eligible & ~selected
    bins = np.linspace(float(weights[eligible].min()), float(weights[eligible].max()), 60)
    axis.hist(weights[rest], bins=bins, alpha=0.6, label=f"rest ({int(rest.sum())})")
    axis.hist(weights[selected], bins=bins, alpha=0.6, label=f"selected ({int(selected.sum())})")
    axis.set_xlabel("log importance weight")
    axis.set_ylabel("examples")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
