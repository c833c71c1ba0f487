"""Classic knowledge distillation with any divergence."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..divergences._registry import get_divergence
from ..reductions import mask_from_labels, masked_mean


class KDLoss(nn.Module):
    r"""Hard-label cross-entropy plus a tempered divergence to the teacher.

    .. math::
        \mathcal{L} = (1 - w)\,\mathrm{CE}(z_s, y) + w\,T^2\,
        \overline{D}\big(\mathrm{softmax}(z_s / T) \,\|\, \mathrm{softmax}(z_t / T)\big)

    with ``D`` any divergence of :mod:`divreg.divergences` (the student is the model, the teacher
    the target) averaged over the positions whose label is not ``ignore_index``. The
    :math:`T^2` factor keeps gradient magnitudes comparable across temperatures (Hinton et al.);
    ``t_squared=False`` drops it.

    Args:
        divergence: a name from ``divreg.divergences`` (``"forward_kl"``, ``"reverse_kl"``,
            ``"generalized_jsd"``, ...); its options go in ``divergence_kwargs``.
        temperature: T > 0.
        kd_weight: w in [0, 1].
        t_squared: multiply the divergence by T^2.
        ignore_index: label of positions left out of both terms.

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015, arXiv 1503.02531.
    """

    def __init__(self, divergence: str = "forward_kl", *, temperature: float = 4.0, kd_weight: float = 0.9,
                 t_squared: bool = True, ignore_index: int = -100, **divergence_kwargs):
        super().__init__()
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        self.divergence = get_divergence(divergence).on_logits
        self.divergence_name, self.divergence_kwargs = divergence, divergence_kwargs
        self.temperature, self.kd_weight, self.t_squared = temperature, kd_weight, t_squared
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, teacher_logits: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """``logits``, ``teacher_logits``: (..., C); ``labels``: (...) or None (pure distillation)."""
        mask = None if labels is None else mask_from_labels(labels, self.ignore_index)
        values = self.divergence(logits, teacher_logits.detach(), temperature=self.temperature,
                                 **self.divergence_kwargs)  # (...)
        distill = masked_mean(values, mask) * (self.temperature**2 if self.t_squared else 1.0)
        if labels is None or self.kd_weight == 1.0:
            return self.kd_weight * distill
        flat = logits.reshape(-1, logits.shape[-1])
        flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # math in fp32 at least
        ce = F.cross_entropy(flat, labels.reshape(-1), ignore_index=self.ignore_index) if bool(mask.any()) else distill * 0.0
        return (1.0 - self.kd_weight) * ce + self.kd_weight * distill

    def extra_repr(self) -> str:
        return (f"divergence={self.divergence_name!r}, temperature={self.temperature}, kd_weight={self.kd_weight}, "
                f"t_squared={self.t_squared}")
