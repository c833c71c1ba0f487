"""Targets: where the distribution a loss pulls toward comes from (teachers, references, the
model's own past predictions, ...)."""

from ._past_predictions import PastPredictions

__all__ = ["PastPredictions"]
