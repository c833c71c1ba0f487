"""Metrics against torchmetrics (ECE), direct loops on hand-made cases (AURC, E-AURC) and
hand formulas."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from divreg.metrics import (accuracy, aurc, brier_score, classification_metrics, e_aurc, expected_calibration_error,
                            nll, optimal_aurc)


def _predictions(seed=0, n=500, classes=7):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    labels[: n // 2] = logits[: n // 2].argmax(1)  # about half right, half mostly wrong
    return torch.softmax(logits, -1), labels


@pytest.mark.parametrize("n_bins", [5, 10, 15])
@pytest.mark.parametrize("seed", range(3))
def test_ece_matches_torchmetrics(seed, n_bins):
    probs, labels = _predictions(seed)
    expected = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")(probs, labels)
    assert abs(expected_calibration_error(probs, labels, n_bins) - float(expected)) < 1e-6


def _aurc_loop(confidence, correct):
    """The risk-coverage loop of PS-KD's evaluation code, written out."""
    pairs = sorted(zip(confidence, correct), key=lambda pair: pair[0], reverse=True)
    risks, errors = [], 0
    for i, (_, right) in enumerate(pairs):
        errors += 0 if right else 1
        risks.append(errors / (i + 1))
    area = sum(risks) / len(risks)
    n, r = len(risks), errors  # PS-KD's opt_aurc: (1/n) sum_{i=1..r} i / (n - r + i)
    optimum = sum(i / (n - r + i) for i in range(1, r + 1)) / n
    return area, area - optimum


@pytest.mark.parametrize("correct", [
    [True, True, False, True, False],
    [False, True, True, True, True, True],
    [True, True, True],
    [False, False],
    [True, False],
])
def test_aurc_and_e_aurc_on_hand_made_cases(correct):
    n = len(correct)
    confidence = [0.99 - 0.08 * i for i in range(n)]  # distinct, descending, all > 0.5
    probs = torch.tensor([[c, 1 - c] for c in confidence], dtype=torch.float64)
    labels = torch.tensor([0 if right else 1 for right in correct])
    expected_aurc, expected_e_aurc = _aurc_loop(confidence, correct)
    assert abs(aurc(probs, labels) - expected_aurc) < 1e-12
    assert abs(e_aurc(probs, labels) - expected_e_aurc) < 1e-12


def test_aurc_known_values():
    # errors ranked last: risks 0, 0, 1/3 -> AURC 1/9; ranked first: 1, 1/2, 1/3 -> 11/18
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    assert abs(aurc(probs, torch.tensor([0, 0, 1])) - 1 / 9) < 1e-12
    assert abs(aurc(probs, torch.tensor([1, 0, 0])) - 11 / 18) < 1e-12


def test_accuracy_nll_brier_against_formulas():
    probs, labels = _predictions(seed=5, n=50, classes=4)
    assert accuracy(probs, labels) == pytest.approx(float((probs.argmax(1) == labels).double().mean()), abs=1e-12)
    expected_nll = float(torch.nn.functional.nll_loss(probs.double().log(), labels))
    assert nll(probs, labels) == pytest.approx(expected_nll, rel=1e-12)
    one_hot = torch.nn.functional.one_hot(labels, 4).double()
    assert brier_score(probs, labels) == pytest.approx(float(((probs.double() - one_hot) ** 2).sum(1).mean()), rel=1e-12)
    perfect = torch.eye(4, dtype=torch.float64)
    metrics = classification_metrics(perfect, torch.arange(4))
    assert metrics == pytest.approx({"accuracy": 1.0, "nll": 0.0, "brier": 0.0, "ece": 0.0, "aurc": 0.0, "e_aurc": 0.0},
                                    abs=1e-12)
    assert math.isfinite(nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])))


def test_bad_inputs():
    probs, labels = _predictions(seed=6, n=10, classes=3)
    with pytest.raises(ValueError, match="simplex|summing to 1"):
        accuracy(probs * 2, labels)
    with pytest.raises(ValueError, match="labels must be integers"):
        nll(probs, labels.float())
    with pytest.raises(ValueError, match="expected probs"):
        aurc(probs[0], labels)
    with pytest.raises(ValueError, match="no samples"):
        brier_score(probs[:0], labels[:0])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, 0)


@pytest.mark.parametrize("n,errors", [(1, 0), (1, 1), (10, 3), (539, 38), (7, 7)])
def test_e_aurc_of_an_ideal_ranking_is_zero_with_the_exact_optimum(n, errors):
    confidence = torch.linspace(0.99, 0.51, n, dtype=torch.float64)
    labels = torch.tensor([0] * (n - errors) + [1] * errors)  # the errors are the least confident
    probs = torch.stack([confidence, 1 - confidence], 1)
    assert abs(e_aurc(probs, labels)) < 1e-12
    expected = sum(i / (n - errors + i) for i in range(1, errors + 1)) / n
    assert abs(optimal_aurc(n, errors) - expected) < 1e-15
    rate = errors / n  # the continuous form is an approximation: it differs at small n
    continuous = rate + (1 - rate) * math.log(1 - rate) if rate < 1 else 1.0
    assert abs(e_aurc(probs, labels, optimum="continuous") - (aurc(probs, labels) - continuous)) < 1e-12
    with pytest.raises(ValueError, match="form must be"):
        optimal_aurc(n, errors, "rough")
