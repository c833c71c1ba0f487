r"""Pseudo-subclass targets from linear projections of a teacher's embeddings, for distillation on
tasks with few classes (LELP: Loo, Iliopoulos, Hu and Vee, "Linear Projections of Teacher
Embeddings for Few-Class Distillation", 2024, arXiv 2409.20449; no official code was found).

With C classes the teacher's soft labels carry little (a binary task: one number per example).
LELP splits each class c into S pseudo-subclasses from the teacher's penultimate embedding h:

1. project h onto the null space of the teacher's output weights W (C x D):
   :math:`h_\perp = (I - W^+ W) h` (the row space is what plain KD already transfers; the paper
   reports this "often helps": ``null_space``);
2. per class c, the top S principal directions :math:`V_c` (D x S) of the class's projected
   embeddings (training examples of class c; the examples are centred by the class mean: ``center``);
3. a random S x S rotation :math:`Q_c` (so that every direction has equal variance in
   expectation: ``rotate``);
4. the subclass scores :math:`z_{c,s} = (h_\perp^\top V_c Q_c)_s` and the target over the S·C
   subclasses :math:`p_{c,s} = p_c\, \mathrm{softmax}_s(z_{c,\cdot} / \beta)`, with :math:`p_c`
   the teacher's class probabilities (at the KD temperature) and :math:`\beta` the subclass
   temperature.

The student has S·C outputs, trained toward :math:`p_{c,s}` (the paper's loss: cross-entropy to
it, with no label term in its experiments); its class probability is
:math:`\sum_s q_{c,s}` (:func:`class_log_probs`). The paper's defaults for S and β were not
available to us: ``subclasses`` and ``beta`` are arguments (defaults 10 and 1, after subclass
distillation's usual S = 10 and an unscaled softmax); the embeddings are standardized per
direction (the projected scores divided by their standard deviation over the class) so that β
means the same thing whatever the embedding's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SubclassProjection:
    """The fitted projections: ``directions`` (C, D, S) per class, ``means`` (C, D), ``scales``
    (C, S); ``null_space`` (D, D) the projector applied first (identity when disabled)."""

    directions: Tensor
    means: Tensor
    scales: Tensor
    null_space: Tensor

    @property
    def subclasses(self) -> int:
        return self.directions.shape[-1]

    def scores(self, embeddings: Tensor) -> Tensor:
        """(N, C, S) standardized subclass scores of embeddings (N, D) for every class."""
        projected = embeddings.to(self.null_space.dtype) @ self.null_space  # (N, D)
        centred = projected[:, None, :] - self.means[None]  # (N, C, D)
        return torch.einsum("ncd,cds->ncs", centred, self.directions) / self.scales[None]

    def log_targets(self, embeddings: Tensor, teacher_logits: Tensor, *, beta: float = 1.0,
                    temperature: float = 1.0) -> Tensor:
        """(N, C·S) the log of LELP's target distribution:
        :math:`\\log p_c + \\log\\mathrm{softmax}_s(z_{c,\\cdot}/\\beta)`, class-major (subclass s of
        class c at index c·S + s)."""
        if not beta > 0 or not temperature > 0:
            raise ValueError(f"beta and temperature must be > 0, got {beta!r}, {temperature!r}")
        class_log_p = torch.log_softmax(teacher_logits.to(self.null_space.dtype) / temperature, dim=-1)  # (N, C)
        within = torch.log_softmax(self.scores(embeddings) / beta, dim=-1)  # (N, C, S)
        return (class_log_p[..., None] + within).flatten(1)

    def targets(self, embeddings: Tensor, teacher_logits: Tensor, *, beta: float = 1.0,
                temperature: float = 1.0) -> Tensor:
        """(N, C·S) LELP's target distribution (the exp of :meth:`log_targets`)."""
        return self.log_targets(embeddings, teacher_logits, beta=beta, temperature=temperature).exp()


def fit_subclass_projection(embeddings: Tensor, labels: Tensor, output_weight: Tensor, subclasses: int = 10, *,
                            null_space: bool = True, rotate: bool = True, center: bool = True,
                            seed: int = 0) -> SubclassProjection:
    """Fit LELP's per-class projections on a teacher's training embeddings (N, D) with their class
    ``labels`` (N,) and the teacher's output weight (C, D); see the module docstring.

    Example:
        >>> h, w = torch.randn(50, 8), torch.randn(2, 8)
        >>> logits = h @ w.T
        >>> projection = fit_subclass_projection(h, logits.argmax(-1), w, subclasses=3)
        >>> targets = projection.targets(h, logits)  # (50, 2 * 3)
        >>> bool(torch.allclose(targets.unflatten(-1, (2, 3)).sum(-1), torch.softmax(logits.double(), -1)))
        True
    """
    h = embeddings.detach().double()
    weight = output_weight.detach().double()
    if h.ndim != 2 or weight.ndim != 2 or weight.shape[1] != h.shape[1] or labels.shape != (h.shape[0],):
        raise ValueError(f"embeddings must be (N, D), labels (N,) and output_weight (C, D); got {tuple(h.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(weight.shape)}")
    classes, size = weight.shape
    if isinstance(subclasses, bool) or not isinstance(subclasses, int) or not 1 <= subclasses <= size:
        raise ValueError(f"subclasses must be an integer in [1, D={size}], got {subclasses!r}")
    projector = (torch.eye(size, dtype=torch.float64) - torch.linalg.pinv(weight) @ weight) if null_space \
        else torch.eye(size, dtype=torch.float64)
    projected = h @ projector  # the projector is symmetric
    generator = torch.Generator().manual_seed(seed)
    directions, means, scales = [], [], []
    for c in range(classes):
        members = projected[labels == c]
        if len(members) < 2:
            raise ValueError(f"class {c} has {len(members)} training example(s): LELP's PCA needs at least 2")
        mean = members.mean(0) if center else torch.zeros(size, dtype=torch.float64)
        _, _, vh = torch.linalg.svd(members - mean, full_matrices=False)
        basis = vh[:subclasses].T  # (D, S), padded below if the class has fewer examples than S
        if basis.shape[1] < subclasses:
            extra = torch.linalg.qr(torch.randn(size, subclasses, dtype=torch.float64, generator=generator))[0]
            basis = torch.cat([basis, extra[:, basis.shape[1]:]], dim=1)
        if rotate:
            basis = basis @ torch.linalg.qr(torch.randn(subclasses, subclasses, dtype=torch.float64,
                                                        generator=generator))[0]
        scores = (members - mean) @ basis
        directions.append(basis)
        means.append(mean)
        scales.append(scores.std(0).clamp_min(1e-12))
    return SubclassProjection(torch.stack(directions), torch.stack(means), torch.stack(scales), projector)


def class_log_probs(subclass_logits: Tensor, classes: int) -> Tensor:
    """(N, C) class log-probabilities of a student with C·S outputs (class-major):
    :math:`\\log \\sum_s q_{c,s}`.

    Example:
        >>> class_log_probs(torch.zeros(1, 6), 2).exp()  # 2 classes x 3 subclasses, uniform
        tensor([[0.5000, 0.5000]])
    """
    if subclass_logits.shape[-1] % classes:
        raise ValueError(f"{subclass_logits.shape[-1]} outputs are not a multiple of {classes} classes")
    log_q = torch.log_softmax(subclass_logits, dim=-1)
    return torch.logsumexp(log_q.unflatten(-1, (classes, -1)), dim=-1)
