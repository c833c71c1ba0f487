"""The configuration of ``divreg select``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class SelectConfig:
    raw: list[str] = field(default_factory=list)  # raw corpus: .jsonl(.gz/.zst) files, .txt files or datasets folders
    target: list[str] = field(default_factory=list)  # target corpus, same formats (pooled into one target by default)
    separate_targets: bool = False  # true: each target file is its own target with its share of num_to_sample
    target_proportions: Optional[list[float]] = None  # shares of separate targets (None: by their n-gram counts)
    text_field: str = "text"  # the field of a JSON record (or datasets column) that holds the text
    num_to_sample: int = 0  # examples to select
    mode: str = "compat"  # "compat": the reference's sha256 buckets; "fast": blake2b buckets (other buckets, same method)
    tokenizer_engine: str = "regex"  # "regex": NLTK 3.10's WordPunctTokenizer (the reference today); "re": older NLTK's
    buckets: int = 10000  # hashed n-gram buckets (B)
    ngrams: int = 2  # unigrams plus 2..n-grams
    min_example_length: int = 100  # words; shorter raw examples are never selected
    target_smoothing: float = 0.0  # Laplace pseudo-count added to every target bucket (0: as the reference)
    fit_tokens: Any = "auto"  # n-grams of the raw corpus the raw model is fit on: "auto" (100000 * buckets), "all", or a number
    top_k: bool = False  # true: the top k weights (deterministic); false: Gumbel top-k (sampling without replacement)
    seed: int = 0  # the Gumbel noise's numpy seed (the reference's selection after np.random.seed(seed))
    reference_num_proc: int = 1  # the reference's num_proc to reproduce: its example order for the noise, its budget split
    random_baselines: int = 3  # random selections of the same size whose KL reduction is reported
    backend: str = "local"  # "local": processes on this machine; "ray": Ray tasks (pip install 'divreg[ray]')
    workers: int = 0  # processes (local) or CPUs of a local Ray (0: every core)
    ray_address: Optional[str] = None  # None: a local Ray; "auto" or "ray://host:10001": join that cluster
    piece_mb: float = 32.0  # uncompressed files are read in pieces of about this many MB (also fewer, for every worker)
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
        if self.random_baselines < 0 or self.shard_size < 1 or self.workers < 0 or self.piece_mb <= 0:
            raise ValueError("random_baselines and workers must be >= 0, shard_size >= 1, piece_mb > 0")
        if self.tokenizer_engine not in ("regex", "re"):
            raise ValueError(f"tokenizer_engine must be 'regex' (NLTK 3.10's) or 're' (older NLTK's), got "
                             f"{self.tokenizer_engine!r}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.reference_num_proc < 1:
            raise ValueError(f"reference_num_proc must be >= 1, got {self.reference_num_proc}")
        self.token_budget()  # validates fit_tokens
        if self.target_proportions is not None:
            if not self.separate_targets:
                raise ValueError("target_proportions needs separate_targets=true (one target per target file)")
            if len(self.target_proportions) != len(self.target) or min(self.target_proportions) < 0 \
                    or sum(self.target_proportions) <= 0:
                raise ValueError(f"target_proportions needs one non-negative share per target file ({len(self.target)}), "
                                 f"with a positive sum; got {list(self.target_proportions)}")

    def token_budget(self) -> Optional[int]:
        """The reference's ``num_tokens_to_fit``: None for "all"."""
        if self.fit_tokens == "auto":
            return 100000 * self.buckets
        if self.fit_tokens == "all":
            return None
        if isinstance(self.fit_tokens, bool) or not isinstance(self.fit_tokens, int) or self.fit_tokens < 1:
            raise ValueError(f"fit_tokens must be 'auto', 'all' or a positive integer, got {self.fit_tokens!r}")
        return self.fit_tokens

    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1
