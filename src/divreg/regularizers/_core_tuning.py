r"""Core-tuning: fine-tuning with a focal supervised contrastive regularizer on mixed features
(Zhang et al., "Unleashing the Power of Contrastive Self-Supervised Visual Models via
Contrast-Regularized Fine-Tuning", NeurIPS 2021, arXiv 2102.06605; official code
github.com/Vanint/Core-tuning, ``Core-tuning.py`` L155-273, L424-429).

.. math::
    p_{ij} = \frac{e^{z_i^\top z_j/\tau}}{\sum_{k\ne i} e^{z_i^\top z_k/\tau}},\qquad
    L_{focal} = \frac{1}{|A|}\sum_{i \in A} -\frac{1}{|P(i)|}\sum_{j\in P(i)} (1 - p_{ij}) \log p_{ij},

z the normalized projections, P(i) the other samples of i's class, A the anchors with a positive,
tau = 0.07; the total is CE + eta L_focal over the batch and two sets of feature-space mixes: random
pairs f~ = (1 - lam) f + lam f[perm], lam ~ Beta(1, 1) clipped to >= 0.8 (the shuffled partner
dominates, as in the code), and for each anchor its hardest positive (least similar same-class
sample) mixed with its hardest negative (most similar other-class sample), lam ~ Beta(1, 1);
labels mixed alike (soft cross-entropy), each distinct soft label a class for the contrastive term.

Where the official code departs, and what divreg does: it divides each anchor's sum by the row
length (3B) rather than |P(i)| (``reduction="row"`` reproduces it; ``"positives"``, the equation,
is the default); its hardest positive is an argmin over a masked row where masked entries are 0,
so on non-negative features it usually picks the anchor itself (we take the argmin over the real
positives, the anchor only when it has none); it turns soft labels into class ids with
``labels @ 10**arange(C)``, which overflows int64 beyond 18 classes (we use exact row identity);
its argparse default eta is 10 while its README runs eta = 0.1 (our default 0.1). Like the code, the
focal weight is not detached.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def focal_supervised_contrastive(features: Tensor, labels: Tensor, *, temperature: float = 0.07,
                                 reduction: str = "positives") -> Tensor:
    """The focal SupCon loss (a scalar; 0 keeping the graph when no anchor has a positive).

    Args:
        features: (N, D) projections (normalized here). labels: (N,) integer classes.
        reduction: ``"positives"`` (divide by |P(i)|, the paper) or ``"row"`` (by N, the code).

    Example:
        >>> import math, torch
        >>> features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> p = math.e / (math.e + 2)  # each anchor: its positive at cosine 1, two negatives at cosine 0
        >>> loss = focal_supervised_contrastive(features, torch.tensor([0, 0, 1, 1]), temperature=1.0)
        >>> round(float(loss), 4), round(-(1 - p) * math.log(p), 4)
        (0.2337, 0.2337)
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}")
    if reduction not in ("positives", "row") or temperature <= 0:
        raise ValueError(f"reduction must be 'positives' or 'row' and temperature > 0, got {reduction!r}, {temperature}")
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    z = F.normalize(features.to(dtype), dim=1)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1).masked_fill(self_mask, 0.0)  # over k != i
    positives = (labels[:, None] == labels[None]) & ~self_mask
    per_anchor = -((1 - log_p.exp()) * log_p * positives).sum(1)
    counts = positives.sum(1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return features.sum() * 0.0
    denominator = counts if reduction == "positives" else torch.full_like(counts, len(z))
    return (per_anchor[anchors] / denominator[anchors]).mean()


def _beta(shape, generator: Optional[torch.Generator], device) -> Tensor:  # Beta(1, 1) = uniform
    return torch.rand(shape, generator=generator, device=device)


def random_pair_mix(features: Tensor, soft_labels: Tensor, *, min_lambda: float = 0.8,
                    generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Random-pair feature mixes: f~ = (1 - lam) f + lam f[perm], lam = max(u, min_lambda).

    Example:
        >>> import torch
        >>> mixed, soft = random_pair_mix(torch.eye(3), torch.eye(3), generator=torch.Generator().manual_seed(0))
        >>> torch.equal(mixed, soft), [round(v, 4) for v in soft.sum(1).tolist()]  # same weights; convex mixes
        (True, [1.0, 1.0, 1.0])
        >>> bool((soft.max(1).values >= 0.8).all())  # the partner weighs lam >= 0.8
        True
    """
    perm = torch.randperm(len(features), generator=generator, device=features.device)
    lam = _beta((len(features), 1), generator, features.device).clamp(min=min_lambda).to(features.dtype)
    return (1 - lam) * features + lam * features[perm], (1 - lam) * soft_labels + lam * soft_labels[perm]


def hard_pair_mix(features: Tensor, labels: Tensor, soft_labels: Tensor, *,
                  generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Per anchor: lam * (its hardest positive) + (1 - lam) * (its hardest negative), cosine
    similarity on the features; an anchor without a negative mixes with itself.

    Example:
        >>> import torch
        >>> features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
        >>> labels = torch.tensor([0, 0, 0, 1, 1])
        >>> mixed, ids = hard_pair_mix(features, labels, torch.eye(5), generator=torch.Generator().manual_seed(0))
        >>> ids[0].nonzero().flatten().tolist()  # anchor 0: least similar positive 2, most similar negative 3
        [2, 3]
        >>> torch.allclose(mixed, ids @ features)  # features and (here one-hot sample-id) labels mixed alike
        True
    """
    z = F.normalize(features.detach(), dim=1)
    similarity = z @ z.T
    same = labels[:, None] == labels[None]
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    hardest_negative = similarity.masked_fill(same, float("-inf")).argmax(1)
    hardest_negative = torch.where(same.all(1), torch.arange(len(z), device=z.device), hardest_negative)
    positive_scores = similarity.masked_fill(~same | self_mask, float("inf"))
    hardest_positive = torch.where((same & ~self_mask).any(1), positive_scores.argmin(1),
                                   torch.arange(len(z), device=z.device))
    lam = _beta((len(features), 1), generator, features.device).to(features.dtype)
    mixed = lam * features[hardest_positive] + (1 - lam) * features[hardest_negative]
    return mixed, lam * soft_labels[hardest_positive] + (1 - lam) * soft_labels[hardest_negative]


def soft_label_classes(soft_labels: Tensor) -> Tensor:
    """(N,) class ids: rows with identical soft labels share an id (exact, any number of classes).

    Example:
        >>> import torch
        >>> soft_label_classes(torch.tensor([[1.0, 0.0], [0.2, 0.8], [1.0, 0.0], [0.2, 0.8]])).tolist()
        [1, 0, 1, 0]
    """
    return torch.unique(soft_labels, dim=0, return_inverse=True)[1]


class CoreTuningLoss(torch.nn.Module):
    """CE + eta * focal SupCon over [features; random-pair mixes; hard-pair mixes], given the
    classifier head and the projection head (see the module docstring)."""

    def __init__(self, classifier: torch.nn.Module, projector: torch.nn.Module, num_classes: int, *,
                 eta: float = 0.1, temperature: float = 0.07, min_lambda: float = 0.8, reduction: str = "positives"):
        super().__init__()
        if eta < 0 or not 0 <= min_lambda <= 1:
            raise ValueError(f"eta must be >= 0 and min_lambda in [0, 1], got {eta}, {min_lambda}")
        self.classifier, self.projector, self.num_classes = classifier, projector, num_classes
        self.eta, self.temperature, self.min_lambda, self.reduction = eta, temperature, min_lambda, reduction

    def forward(self, features: Tensor, labels: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
        soft = F.one_hot(labels, self.num_classes).to(features.dtype)
        random_mix = random_pair_mix(features, soft, min_lambda=self.min_lambda, generator=generator)
        hard_mix = hard_pair_mix(features, labels, soft, generator=generator)
        all_features = torch.cat([features, random_mix[0], hard_mix[0]])
        all_soft = torch.cat([soft, random_mix[1], hard_mix[1]])
        ce = -(all_soft * F.log_softmax(self.classifier(all_features), dim=1)).sum(1).mean()
        contrast = focal_supervised_contrastive(self.projector(all_features), soft_label_classes(all_soft),
                                                temperature=self.temperature, reduction=self.reduction)
        return ce + self.eta * contrast
