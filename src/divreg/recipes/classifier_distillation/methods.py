"""The training objectives the classifier recipe compares, each a small object that turns a
batch into a loss using the losses of :mod:`divreg.losses` (no divergence math here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import ClassificationData, augment
from ...losses import KDLoss, PSKDLoss, SinKDLoss, TwoViewKL
from ...schedules import LinearRamp
from ...targets import DenseLogits, PastPredictions
from .config import ClassifierMethod


@dataclass
class Batch:
    x: Tensor  # (B, ...) this process's inputs
    labels: Tensor  # (B,)
    indices: Tensor  # (B,) dataset indices
    epoch: int
    seeds: list[int]  # one per example: the seed of its augmentations at this step (derive_seed(seed, step, index))


class Method:
    """Cross-entropy; subclasses override :meth:`loss`. ``needs_teacher`` asks the loop for the
    teacher's signal; the state (``state_dict``) is saved in checkpoints."""

    needs_teacher = False

    def loss(self, model: nn.Module, batch: Batch, target: Optional[DenseLogits]) -> tuple[Tensor, Tensor]:
        """(loss, the model's logits on the clean inputs)."""
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.labels), logits

    def after_step(self, indices: Tensor, logits: Tensor) -> None:
        """Called with the *global* batch's indices and logits after each optimizer step."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LabelSmoothing(Method):
    def __init__(self, smoothing: float):
        self.smoothing = smoothing

    def loss(self, model, batch, target):
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.labels, label_smoothing=self.smoothing), logits


class Distillation(Method):
    """Any loss of the form ``loss_fn(logits, target, labels)`` (KD, SinKD)."""

    needs_teacher = True

    def __init__(self, loss_fn: nn.Module):
        self.loss_fn = loss_fn

    def loss(self, model, batch, target):
        logits = model(batch.x)
        return self.loss_fn(logits, target, batch.labels), logits


class SelfDistillation(Method):
    """PS-KD: targets from the model's own predictions of the previous epoch."""

    def __init__(self, labels: Tensor, num_classes: int, alpha: float, epochs: int):
        self.loss_fn = PSKDLoss(PastPredictions(labels, num_classes), LinearRamp(alpha, epochs))

    def loss(self, model, batch, target):
        logits = model(batch.x)
        return self.loss_fn(logits, batch.labels, batch.indices, batch.epoch), logits

    def after_step(self, indices, logits):
        self.loss_fn.remember(indices, logits)

    def state_dict(self):
        return {"memory": self.loss_fn.memory.state_dict()}

    def load_state_dict(self, state):
        self.loss_fn.memory.load_state_dict(state["memory"])


class TwoViews(Method):
    """Cross-entropy on two augmented views plus a divergence between their predictions."""

    def __init__(self, consistency: TwoViewKL, max_shift: int, noise_std: float):
        self.consistency, self.max_shift, self.noise_std = consistency, max_shift, noise_std

    def loss(self, model, batch, target):
        generators = [torch.Generator().manual_seed(seed) for seed in batch.seeds]  # per example: 2 processes = 1
        views = [augment(batch.x, generators, max_shift=self.max_shift, noise_std=self.noise_std) for _ in "12"]
        logits_1, logits_2 = model(torch.cat(views)).chunk(2)  # one forward for both views
        ce = 0.5 * (F.cross_entropy(logits_1, batch.labels) + F.cross_entropy(logits_2, batch.labels))
        return ce + self.consistency(logits_1, logits_2), logits_1


def make_method(spec: ClassifierMethod, data: ClassificationData, epochs: int) -> Method:
    """The objective a method entry describes."""
    if spec.kind == "ce":
        return Method()
    if spec.kind == "label_smoothing":
        return LabelSmoothing(spec.weight)
    if spec.kind == "sinkd":
        return Distillation(SinKDLoss(temperature=spec.temperature, kd_weight=spec.weight, **spec.options))
    if spec.kind == "pskd":
        return SelfDistillation(data.y_train, data.num_classes, spec.weight, epochs)
    if spec.kind == "two_view":
        options = {"augment_shift": 1, "augment_noise": 0.1, **spec.options}
        consistency = TwoViewKL(weight=spec.weight, divergence=spec.divergence, **spec.divergence_options)
        return TwoViews(consistency, options["augment_shift"], options["augment_noise"])
    options = dict(spec.divergence_options)
    if spec.divergence == "topk_kl":
        options["k"] = min(options.get("k", data.num_classes), data.num_classes)
    return Distillation(KDLoss(spec.divergence, temperature=spec.temperature, kd_weight=spec.weight, **options))
