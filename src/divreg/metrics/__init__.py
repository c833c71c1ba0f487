"""Metrics: accuracy and calibration of classifiers (ECE, AURC, NLL, Brier) and of dense
predictions (pixel-wise and classwise ECE), and their plots
(reliability diagrams, metric bars, training curves; matplotlib is imported when one is drawn)."""

from ._classification import (
    accuracy,
    aurc,
    brier_score,
    calibration_bins,
    classification_metrics,
    e_aurc,
    expected_calibration_error,
    nll,
    optimal_aurc,
)
from ._dense import classwise_ece, pixel_ece
from ._plots import metric_bars, reliability_diagrams, training_curves

__all__ = ["accuracy", "aurc", "brier_score", "calibration_bins", "classification_metrics", "classwise_ece", "e_aurc",
           "expected_calibration_error", "metric_bars", "nll", "optimal_aurc", "pixel_ece", "reliability_diagrams",
           "training_curves"]
