"""Metrics: accuracy and calibration of classifiers (ECE, AURC, NLL, Brier), with plots."""

from ._classification import (
    accuracy,
    aurc,
    brier_score,
    classification_metrics,
    e_aurc,
    expected_calibration_error,
    nll,
)

__all__ = ["accuracy", "aurc", "brier_score", "classification_metrics", "e_aurc", "expected_calibration_error", "nll"]
