"""Small classifiers (an MLP, a CNN without batch norm), and building any ``nn.Module`` by
dotted path."""

from __future__ import annotations

import importlib
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ._modes import evaluating


class MLP(nn.Module):
    """Flatten, then Linear-ReLU blocks of the given widths, then a linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (128, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(input_shape)
        for width in widths:
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, C)


class SmallCNN(nn.Module):
    """3x3 Conv-ReLU blocks of the given widths (2x2 max-pool after the second), global average
    pooling, linear classifier. No batch norm, so a multi-process run computes what one process
    computes on the same global batch."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (32, 64)):
        super().__init__()
        channels = input_shape[0]
        layers: list[nn.Module] = []
        for index, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if index == 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, C)


def _import(path: str):
    module_name, _, attribute = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import model {path!r}: {error}") from error


def build_classifier(kind: str, widths: Sequence[int], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """``"auto"`` (CNN for images, MLP for features), ``"mlp"``, ``"cnn"``, or a dotted path
    ``package.module.Name`` to a callable ``(input_shape=..., num_classes=...) -> nn.Module``."""
    is_image = len(input_shape) == 3
    if kind == "auto":
        kind = "cnn" if is_image else "mlp"
    if kind == "mlp":
        return MLP(input_shape, num_classes, widths)
    if kind == "cnn":
        if not is_image:
            raise ValueError(f"model 'cnn' needs image inputs (C, H, W); these are {tuple(input_shape)}")
        return SmallCNN(input_shape, num_classes, widths)
    if "." not in kind and ":" not in kind:
        raise ValueError(f"model kind must be 'auto', 'mlp', 'cnn' or a dotted import path, got {kind!r}")
    model = _import(kind)(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{kind} returned {type(model).__name__}, not an nn.Module")
    return model


@torch.no_grad()
def predict_probabilities(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """(N, C) class probabilities of ``model`` on ``x`` (N, ...) in fp32, computed in eval mode
    (the model's mode is restored after)."""
    device = next(model.parameters()).device
    with evaluating(model):
        return torch.cat([torch.softmax(model(x[i:i + batch_size].to(device)).float(), -1).cpu()
                          for i in range(0, len(x), batch_size)])
