r"""Data selection by importance resampling with hashed n-gram features (DSIR: Xie et al., "Data
Selection for Language Models via Importance Resampling", 2023, arXiv 2302.03169; reference
package ``data-selection``, ``HashedNgramDSIR``; official code github.com/p-lambda/dsir).

``hash="sha256"`` (compat) gives the reference's buckets exactly; ``hash="blake2b"`` (fast) a
cheaper 8-byte digest: other buckets, the same method. Speed comes from hashing each distinct
n-gram once, tokenizing and hashing each text once (:class:`Features`), and processes over shards,
never from changing the answer. Beside it, a source-task allocation for multi-task representation
learning (:func:`task_relevance`, :func:`allocate_source_samples`: Wang et al. 2023, the Lasso
rule). The corpus readers (JSONL, gzip/zstd, text files, ``datasets``
folders, read in byte-range pieces with clear errors naming the file and line) are here too.
"""

from ._dsir import (LOG_FLOOR, bag_of_ngrams, fit_mask, gumbel_top_k_probability, kl_reduction, log_importance_weights,
                    log_ratio, reference_order, reference_virtual_shards, resample, resample_targets, split_counts,
                    virtual_shard_order)
from ._corpus import Piece, check_has_examples, check_readable, plan_pieces, read_piece
from ._features import Features, featurize
from ._multitask import RULES as ALLOCATION_RULES, allocate_source_samples, task_relevance
from ._ngrams import ENGINES, HASHES, WORDPUNCT, NgramHasher

__all__ = ["Piece", "check_has_examples", "check_readable", "plan_pieces", "read_piece",
           "ENGINES", "HASHES", "LOG_FLOOR", "WORDPUNCT", "Features", "NgramHasher", "bag_of_ngrams", "featurize", "fit_mask",
           "gumbel_top_k_probability", "kl_reduction", "log_importance_weights", "log_ratio", "reference_order",
           "reference_virtual_shards", "resample", "resample_targets", "split_counts", "virtual_shard_order", "ALLOCATION_RULES", "allocate_source_samples", "task_relevance"]
