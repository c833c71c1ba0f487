"""Matplotlib figures for classifier results: reliability diagrams, metric bars, curves."""

from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ._classification import calibration_bins


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_diagrams(predictions: Mapping[str, tuple[Tensor, Tensor]], path: str, n_bins: int = 10) -> None:
    """One reliability diagram per entry (name -> (probs (N, C), labels (N,))), in a grid."""
    plt = _pyplot()
    columns = min(4, len(predictions))
    rows = math.ceil(len(predictions) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(predictions):]:
        axis.set_visible(False)
    edges = torch.linspace(0, 1, n_bins + 1)
    for axis, (name, (probs, labels)) in zip(axes.flat, predictions.items()):
        count, correct, _ = calibration_bins(probs, labels, n_bins)
        accuracy = (correct / count.clamp(min=1)).numpy()  # 0 in empty bins
        axis.bar(edges[:-1].numpy(), accuracy, width=1 / n_bins, align="edge", edgecolor="k", alpha=0.7, label="accuracy")
        axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        axis.set_title(name)
        axis.set_xlabel("confidence")
        axis.set_ylabel("accuracy")
    axes.flat[0].legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def metric_bars(summary: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str], path: str) -> None:
    """Bar chart of ``summary[method][metric] = {"mean", "std"}`` for each metric."""
    plt = _pyplot()
    names = list(summary)
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8))
    for axis, metric in zip(axes, metrics):
        means = [summary[name][metric]["mean"] for name in names]
        stds = [summary[name][metric]["std"] for name in names]
        axis.bar(range(len(names)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(names))])
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axis.set_title(metric)
        low = min(m - s for m, s in zip(means, stds))
        high = max(m + s for m, s in zip(means, stds))
        axis.set_ylim(max(0.0, low - 0.1 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def training_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str, x_key: str | None = None,
                    title: str | None = None) -> None:
    """``curves[run][series] = values per epoch``; one panel per series, one line per run. With
    ``x_key``, ``curves[run][x_key]`` holds the x values (e.g. the training step) instead, and a
    series given as a pair ``(xs, values)`` has its own x values (e.g. per-step metrics next to
    per-evaluation ones); ``title`` goes above the panels (say what the values were measured on)."""
    plt = _pyplot()
    series = sorted({key for run in curves.values() for key in run} - {x_key})
    figure, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.5), squeeze=False)
    for axis, key in zip(axes.flat, series):
        for run, values in curves.items():
            if key in values:
                ys = values[key]
                if isinstance(ys, tuple):
                    xs, ys = ys
                else:
                    xs = values[x_key] if x_key else range(1, len(ys) + 1)
                axis.plot(xs, ys, label=run)
        axis.set_title(key)
        axis.set_xlabel(x_key or "epoch")
    axes.flat[0].legend(fontsize=7)
    if title:
        figure.suptitle("\n".join(textwrap.wrap(title, 40 * len(series))), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
