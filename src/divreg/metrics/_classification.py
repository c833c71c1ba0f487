"""Classification and calibration metrics on predicted probabilities.

Every metric takes ``probs`` (N, C), rows on the simplex, and integer ``labels`` (N,), and
returns a Python float.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("no samples: metrics need at least one")
    if torch.is_floating_point(labels) or not bool(((labels >= 0) & (labels < probs.shape[1])).all()):
        raise ValueError(f"labels must be integers in [0, {probs.shape[1]})")
    probs = probs.detach().double()
    if bool(torch.isnan(probs).any()) or bool((probs < 0).any()) or bool(((probs.sum(1) - 1).abs() > 1e-4).any()):
        raise ValueError("probs must be non-negative rows summing to 1 (pass softmax(logits), not logits)")
    return probs, labels.long()


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose arg-max class is the label.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> round(accuracy(probs, torch.tensor([0, 1, 1])), 4)  # the third arg-max (class 0) is wrong: 2/3
        0.6667
    """
    probs, labels = _check(probs, labels)
    return float((probs.argmax(1) == labels).double().mean())


def nll(probs: Tensor, labels: Tensor) -> float:
    r"""Negative log-likelihood :math:`-\frac1N \sum_i \log p_{i, y_i}`; a probability of exactly 0
    is clamped to the smallest positive float64 (about 2.2e-308), so the value stays finite.

    Example:
        >>> import math, torch
        >>> uniform = torch.full((2, 4), 0.25)  # every label gets probability 1/4
        >>> round(nll(uniform, torch.tensor([0, 3])), 4), round(math.log(4), 4)
        (1.3863, 1.3863)
    """
    probs, labels = _check(probs, labels)
    picked = probs.gather(1, labels[:, None]).squeeze(1).clamp(min=torch.finfo(torch.float64).tiny)
    return float(-picked.log().mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    r"""Multi-class Brier score :math:`\frac1N \sum_i \sum_c (p_{ic} - [y_i = c])^2`, in [0, 2]
    (Brier 1950; not divided by the number of classes).

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
        >>> round(brier_score(probs, torch.tensor([0, 1])), 4)  # ((0.2^2 + 0.2^2) + (0.5^2 + 0.5^2)) / 2
        0.29
    """
    probs, labels = _check(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float((probs - one_hot).square().sum(1).mean())


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    r"""Expected calibration error with ``n_bins`` equal-width bins of the confidence
    (max probability), :math:`\sum_b \frac{|B_b|}{N} |\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|`.

    Bin b holds confidences in ((b-1)/n, b/n] (the first also holds 0).

    References:
        Guo, Pleiss, Sun, Weinberger. "On Calibration of Modern Neural Networks", ICML 2017,
        arXiv 1706.04599.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.7, 0.3], [0.7, 0.3]])  # confidence 0.7 ...
        >>> round(expected_calibration_error(probs, torch.tensor([0, 1])), 4)  # ... accuracy 0.5
        0.2
        >>> expected_calibration_error(torch.eye(3), torch.tensor([0, 1, 2]))  # confident and right
        0.0
    """
    count, correct, confidence = calibration_bins(probs, labels, n_bins)
    return float((correct - confidence).abs().sum() / count.sum())


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin (as in :func:`expected_calibration_error`): the number of
    samples, the number of correct ones and the sum of their confidences, each (n_bins,) float64.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])  # confidences 0.9, 0.6, 0.7
        >>> count, correct, confidence = calibration_bins(probs, torch.tensor([0, 1, 1]), n_bins=4)
        >>> count.tolist(), correct.tolist(), [round(v, 4) for v in confidence.tolist()]
        ([0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.3, 0.9])
        >>> round(float((correct - confidence).abs().sum() / count.sum()), 4)  # the ECE: (0.3 + 0.1) / 3
        0.1333
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    probs, labels = _check(probs, labels)
    confidence, predicted = probs.max(1)
    bins = torch.clamp(torch.ceil(confidence * n_bins).long() - 1, 0, n_bins - 1)  # (N,)

    def per_bin(values: Tensor) -> Tensor:
        return torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, values.double())

    return per_bin(torch.ones_like(confidence)), per_bin(predicted == labels), per_bin(confidence)


def _risks_by_coverage(probs: Tensor, labels: Tensor) -> Tensor:
    """Risk (error rate) among the k most confident samples, k = 1..N (stable sort)."""
    confidence, predicted = probs.max(1)
    order = torch.sort(confidence, descending=True, stable=True).indices
    errors = (predicted[order] != labels[order]).double()
    return errors.cumsum(0) / torch.arange(1, probs.shape[0] + 1, dtype=torch.float64)


def aurc(probs: Tensor, labels: Tensor) -> float:
    r"""Area under the risk-coverage curve: samples sorted by confidence (max probability),
    :math:`\frac1N \sum_{k=1}^N \mathrm{risk}(k)`, a fraction (not scaled by 1000).

    References:
        Geifman, Uziel, El-Yaniv. "Bias-Reduced Uncertainty Estimation for Deep Neural
        Classifiers", ICLR 2019, arXiv 1805.08206; as computed in PS-KD (arXiv 2006.12000).

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
        >>> round(aurc(probs, torch.tensor([0, 0, 1])), 4)  # the error least confident: risks 0, 0, 1/3
        0.1111
        >>> round(aurc(probs, torch.tensor([1, 0, 0])), 4)  # the error most confident: risks 1, 1/2, 1/3
        0.6111
    """
    probs, labels = _check(probs, labels)
    return float(_risks_by_coverage(probs, labels).mean())


def optimal_aurc(num_samples: int, num_errors: int, form: str = "exact") -> float:
    r"""AURC of an ideal confidence ranking (every error ranked below every correct prediction)
    with ``num_errors`` = r errors among ``num_samples`` = n predictions.

    ``form="exact"``: :math:`\frac1n \sum_{i=1}^{r} \frac{i}{n - r + i}` (the risk is 0 until the
    n - r correct ones are covered, then i / (n - r + i)), what PS-KD's evaluation code subtracts
    (``utils/metric.py``). ``form="continuous"``: the large-n limit
    :math:`\hat r + (1 - \hat r)\log(1 - \hat r)`, :math:`\hat r = r / n` (Geifman et al.).

    Example:
        >>> round(optimal_aurc(4, 1), 6)  # risks 0, 0, 0, 1/4
        0.0625
    """
    if not 0 <= num_errors <= num_samples or num_samples < 1:
        raise ValueError(f"need 0 <= num_errors <= num_samples and num_samples >= 1, got {num_errors}, {num_samples}")
    if form == "exact":
        i = torch.arange(1, num_errors + 1, dtype=torch.float64)
        return float((i / (num_samples - num_errors + i)).sum()) / num_samples
    if form == "continuous":
        rate = num_errors / num_samples
        return rate + (1 - rate) * math.log(1 - rate) if rate < 1 else 1.0
    raise ValueError(f"form must be 'exact' or 'continuous', got {form!r}")


def e_aurc(probs: Tensor, labels: Tensor, optimum: str = "exact") -> float:
    r"""Excess AURC: :func:`aurc` minus :func:`optimal_aurc` for the same number of errors, in
    its ``"exact"`` form by default (as PS-KD's evaluation code computes it; 0 for an ideal
    ranking), or the ``"continuous"`` large-n approximation.

    References:
        Geifman, Uziel, El-Yaniv, ICLR 2019, arXiv 1805.08206; PS-KD (Kim et al., ICCV 2021,
        arXiv 2006.12000), github.com/lgcnsai/PS-KD-Pytorch ``utils/metric.py``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
        >>> round(e_aurc(probs, torch.tensor([0, 0, 1])), 4)  # the error ranked last: an ideal ranking
        0.0
        >>> round(e_aurc(probs, torch.tensor([1, 0, 0])), 4)  # the error ranked first: 0.6111 - 0.1111
        0.5
    """
    probs, labels = _check(probs, labels)
    risks = _risks_by_coverage(probs, labels)
    errors = int(round(float(risks[-1]) * len(risks)))
    return float(risks.mean()) - optimal_aurc(len(risks), errors, optimum)


def classification_metrics(probs: Tensor, labels: Tensor, n_bins: int = 10) -> dict[str, float]:
    """All of the above, keyed ``accuracy``, ``nll``, ``brier``, ``ece``, ``aurc``, ``e_aurc``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.75, 0.25], [0.75, 0.25]])  # one right, one wrong, both at confidence 0.75
        >>> {k: round(v, 4) for k, v in classification_metrics(probs, torch.tensor([0, 1])).items()}
        {'accuracy': 0.5, 'nll': 0.837, 'brier': 0.625, 'ece': 0.25, 'aurc': 0.25, 'e_aurc': 0.0}
    """
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "aurc": aurc(probs, labels),
        "e_aurc": e_aurc(probs, labels),
    }
