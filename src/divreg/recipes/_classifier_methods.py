"""The training objectives the classifier recipe compares, each a small object that turns a
batch into a loss using the losses of :mod:`divreg.losses` (no divergence math here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ClassificationData, augment
from ..losses import KDLoss, PSKDLoss, SinKDLoss, TwoViewKL
from ..schedules import LinearRamp
from ..targets import PastPredictions
from ._classifier_config import DistillClassifierConfig, kd_divergence


@dataclass
class Batch:
    x: Tensor  # (B, ...) this process's inputs
    labels: Tensor  # (B,)
    indices: Tensor  # (B,) dataset indices
    epoch: int
    generator: torch.Generator  # randomness of this step and process (augmentations)


class Method:
    """Cross-entropy; subclasses override :meth:`loss`. ``needs_teacher`` asks the loop for
    teacher logits; ``state`` is saved in checkpoints."""

    needs_teacher = False

    def loss(self, model: nn.Module, batch: Batch, teacher_logits: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(loss, the model's logits on the clean inputs)."""
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.labels), logits

    def after_step(self, indices: Tensor, logits: Tensor) -> None:
        """Called with the *global* batch's indices and logits after each optimizer step."""

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class LabelSmoothing(Method):
    def __init__(self, smoothing: float):
        self.smoothing = smoothing

    def loss(self, model, batch, teacher_logits):
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.labels, label_smoothing=self.smoothing), logits


class Distillation(Method):
    """Any loss of the form ``loss_fn(logits, teacher_logits, labels)`` (KD, SinKD)."""

    needs_teacher = True

    def __init__(self, loss_fn: nn.Module):
        self.loss_fn = loss_fn

    def loss(self, model, batch, teacher_logits):
        logits = model(batch.x)
        return self.loss_fn(logits, teacher_logits, batch.labels), logits


class SelfDistillation(Method):
    """PS-KD: targets from the model's own predictions of the previous epoch."""

    def __init__(self, labels: Tensor, num_classes: int, alpha: float, epochs: int):
        self.loss_fn = PSKDLoss(PastPredictions(labels, num_classes), LinearRamp(alpha, epochs))

    def loss(self, model, batch, teacher_logits):
        logits = model(batch.x)
        return self.loss_fn(logits, batch.labels, batch.indices, batch.epoch), logits

    def after_step(self, indices, logits):
        self.loss_fn.remember(indices, logits)

    def state(self):
        return {"memory": self.loss_fn.memory.state_dict()}

    def load_state(self, state):
        self.loss_fn.memory.load_state_dict(state["memory"])


class TwoViews(Method):
    """Cross-entropy on two augmented views plus the two-view KL between their predictions."""

    def __init__(self, weight: float, max_shift: int, noise_std: float):
        self.consistency = TwoViewKL(weight=weight)
        self.max_shift, self.noise_std = max_shift, noise_std

    def loss(self, model, batch, teacher_logits):
        views = [augment(batch.x, batch.generator, max_shift=self.max_shift, noise_std=self.noise_std) for _ in "12"]
        logits_1, logits_2 = model(torch.cat(views)).chunk(2)  # one forward for both views
        ce = 0.5 * (F.cross_entropy(logits_1, batch.labels) + F.cross_entropy(logits_2, batch.labels))
        return ce + self.consistency(logits_1, logits_2), logits_1


def make_method(name: str, config: DistillClassifierConfig, data: ClassificationData) -> Method:
    """The method called ``name`` with its settings from ``config``."""
    if name == "ce":
        return Method()
    if name == "label_smoothing":
        return LabelSmoothing(config.label_smoothing)
    if name == "sinkd":
        spec = config.sinkd
        return Distillation(SinKDLoss(temperature=spec.temperature, kd_weight=spec.kd_weight,
                                      sinkhorn_weight=spec.sinkhorn_weight, epsilon=spec.epsilon, n_iters=spec.n_iters))
    if name == "pskd":
        return SelfDistillation(data.y_train, data.num_classes, config.pskd_alpha, config.epochs)
    if name == "two_view":
        return TwoViews(config.two_view_weight, config.augment_shift, config.augment_noise)
    divergence = kd_divergence(name)
    options = {"generalized_jsd": {"beta": config.jsd_beta}, "alpha_divergence": {"alpha": config.kd_alpha},
               "topk_kl": {"k": min(config.kd_topk, data.num_classes)}}.get(divergence, {})
    return Distillation(KDLoss(divergence, temperature=config.kd_temperature, kd_weight=config.kd_weight, **options))
