"""Calibration of dense predictions (segmentation): pixel-wise ECE (every pixel a sample) and
classwise ECE (one-vs-rest per class, averaged over classes).

``probs`` is (B, C, *spatial) on the simplex along dim 1, ``labels`` (B, *spatial) integers;
pixels whose label is ``ignore_index`` are left out. Both return a Python float.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._classification import _check, expected_calibration_error


def _pixels(probs: Tensor, labels: Tensor, ignore_index: Optional[int]) -> tuple[Tensor, Tensor]:
    """(N, C) probabilities and (N,) labels of the pixels kept."""
    if probs.dim() < 3 or labels.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"expected probs (B, C, *spatial) and labels (B, *spatial), got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    flat_probs, flat_labels = probs.movedim(1, -1).reshape(-1, probs.shape[1]), labels.reshape(-1)
    if ignore_index is not None:
        keep = flat_labels != ignore_index
        flat_probs, flat_labels = flat_probs[keep], flat_labels[keep]
    return flat_probs, flat_labels


def pixel_ece(probs: Tensor, labels: Tensor, n_bins: int = 10, ignore_index: Optional[int] = None) -> float:
    """Expected calibration error over every (kept) pixel: the top-label ECE of
    :func:`expected_calibration_error` with the pixels as samples.

    Example:
        >>> import torch
        >>> probs = torch.tensor([0.7, 0.3])[None, :, None, None].expand(1, 2, 1, 2)  # two pixels, both 0.7 on class 0
        >>> round(pixel_ece(probs, torch.tensor([[[0, 1]]])), 4)  # confidence 0.7, accuracy 0.5
        0.2
        >>> round(pixel_ece(probs, torch.tensor([[[0, 255]]]), ignore_index=255), 4)  # only the right pixel kept
        0.3
    """
    return expected_calibration_error(*_pixels(probs, labels, ignore_index), n_bins=n_bins)


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = 10, ignore_index: Optional[int] = None) -> float:
    r"""Classwise ECE: :math:`\frac1C \sum_c \sum_b \frac{|B_{cb}|}{N} |\mathrm{freq}_c(B_{cb}) -
    \mathrm{conf}_c(B_{cb})|`, bins of p_c (equal width, as the top-label ECE) and freq_c the
    fraction of the bin's pixels labelled c (Kull et al., "Beyond temperature scaling", NeurIPS
    2019, arXiv 1910.12656).

    Example:
        >>> import torch
        >>> probs = torch.tensor([0.6, 0.3, 0.1])[None, :, None, None].expand(1, 3, 1, 2)  # two pixels alike
        >>> labels = torch.tensor([[[0, 1]]])  # class frequencies 0.5, 0.5, 0
        >>> round(classwise_ece(probs, labels), 4)  # (|0.5 - 0.6| + |0.5 - 0.3| + |0 - 0.1|) / 3
        0.1333
        >>> round(pixel_ece(probs, labels), 4)  # the top label alone: |0.5 - 0.6|
        0.1
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    flat_probs, flat_labels = _check(*_pixels(probs, labels, ignore_index))
    num_classes, total = flat_probs.shape[1], 0.0
    for c in range(num_classes):
        confidence = flat_probs[:, c]
        bins = torch.clamp(torch.ceil(confidence * n_bins).long() - 1, 0, n_bins - 1)
        gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, (flat_labels == c).double() - confidence)
        total += float(gap.abs().sum()) / len(flat_labels)
    return total / num_classes
