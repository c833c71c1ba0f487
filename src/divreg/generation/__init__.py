"""Controlled generation that samples the right distribution: adaptive weighted rejection sampling
(AWRS) of each token under a constraint, with unbiased weights; sequential Monte Carlo toward the
global constrained posterior; token masking and rejection sampling as baselines; constraints from a
regular expression, a JSON schema or a Python predicate; exact distributions on enumerable toys."""

from ._awrs import ESTIMATORS, AWRSSample, awrs, gumbel_order
from ._constraints import Constraint, JSONSchema, Predicate, Regex, json_schema_regex, token_texts
from ._exact import (distribution_kl, exact_importance_resampling, exact_locally_constrained, exact_posterior,
                     given_success, outcome_total_variation)
from ._models import BigramLM, TransformersLM
from ._smc import (RESAMPLING, SAMPLERS, RejectionResult, SMCResult, masked_sample, rejection_sampling,
                   resample_indices, smc)

__all__ = ["ESTIMATORS", "AWRSSample", "awrs", "gumbel_order", "Constraint", "JSONSchema", "Predicate", "Regex",
           "json_schema_regex", "token_texts", "distribution_kl", "exact_importance_resampling",
           "exact_locally_constrained", "exact_posterior", "given_success", "outcome_total_variation", "BigramLM",
           "TransformersLM", "RESAMPLING", "SAMPLERS", "RejectionResult", "SMCResult", "masked_sample",
           "rejection_sampling", "resample_indices", "smc"]
