"""Targets: where the distribution a loss pulls toward comes from (a live teacher, a cached
teacher, a frozen reference policy, the model's own past predictions), and the typed signals
they give a loss (:class:`DenseLogits`, :class:`HiddenStates`, :class:`SparseTopK`,
:class:`SampledLogprobs`); LELP's pseudo-subclass targets from a teacher's embeddings
(:func:`fit_subclass_projection`)."""

from ._on_signals import (FUSED_AUTO_VOCAB, FUSED_SETTINGS, gives_hidden_states, sampled_token_logprobs,
                          sampled_token_statistics, signal_divergence)
from ._past_predictions import PastPredictions
from ._signals import DenseLogits, HiddenStates, SampledLogprobs, Signal, SparseTopK, as_logits, detached
from ._sources import LiveTeacher, ReferencePolicy
from ._subclasses import SubclassProjection, class_log_probs, fit_subclass_projection
from ._teacher_cache import TeacherCache, TeacherCacheWriter
from ._truncation import truncation_report
from ._vocabulary import VOCAB_POLICIES, shared_vocab_size, tokenizer_fingerprint

__all__ = ["truncation_report", "FUSED_AUTO_VOCAB", "FUSED_SETTINGS", "gives_hidden_states", "sampled_token_logprobs", "sampled_token_statistics", "signal_divergence",
           "DenseLogits", "HiddenStates", "LiveTeacher", "PastPredictions", "ReferencePolicy", "SampledLogprobs",
           "Signal", "SparseTopK", "TeacherCache", "TeacherCacheWriter", "VOCAB_POLICIES", "as_logits", "detached",
           "shared_vocab_size", "tokenizer_fingerprint", "SubclassProjection", "class_log_probs",
           "fit_subclass_projection"]
