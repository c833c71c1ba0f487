"""Targets: where the distribution a loss pulls toward comes from (teachers, references, the
model's own past predictions, ...)."""

from ._past_predictions import PastPredictions
from ._teacher_cache import TeacherCache, TeacherCacheWriter
from ._vocabulary import VOCAB_POLICIES, shared_vocab_size, tokenizer_fingerprint

__all__ = ["PastPredictions", "TeacherCache", "TeacherCacheWriter", "VOCAB_POLICIES", "shared_vocab_size",
           "tokenizer_fingerprint"]
