"""Controlled generation that samples the right distribution (issue 18, in progress): adaptive
weighted rejection sampling of a token under a constraint, with unbiased weights."""

from ._awrs import ESTIMATORS, AWRSSample, awrs, gumbel_order

__all__ = ["ESTIMATORS", "AWRSSample", "awrs", "gumbel_order"]
