"""Classic knowledge distillation with any divergence."""

from __future__ import annotations

from typing import Callable, Optional, Union

from torch import Tensor, nn

from ..divergences import check_divergence_options, get_divergence
from ..reductions import get_reduction, mask_from_labels, masked_mean
from ..schedules import Schedule, as_schedule
from ..targets import DenseLogits, HiddenStates, as_logits
from ._common import apply_reduction, cross_entropy_values


class KDLoss(nn.Module):
    r"""Hard-label cross-entropy plus a tempered divergence to the teacher.

    .. math::
        \mathcal{L} = (1 - w)\,\mathrm{CE}(z_s, y) + w\,T^2\,
        \overline{D}\big(\mathrm{softmax}(z_s / T) \,\|\, \mathrm{softmax}(z_t / T)\big)

    with ``D`` any divergence of :mod:`divreg.divergences` (the student is the model, the teacher
    the target), both terms reduced over the positions whose label is not ``ignore_index`` by
    ``reduction`` (the token mean by default). The :math:`T^2` factor keeps gradient magnitudes
    comparable across temperatures (Hinton et al.); ``t_squared=False`` drops it.

    Args:
        divergence: a name from ``divreg.divergences`` (``"forward_kl"``, ``"reverse_kl"``,
            ``"generalized_jsd"``, ...); its options go in ``divergence_kwargs``.
        temperature: T > 0.
        kd_weight: w in [0, 1], a number or a :class:`divreg.schedules.Schedule` of the step.
        t_squared: multiply the divergence by T^2.
        reduction: a reduction of :mod:`divreg.reductions` (or its name).
        ignore_index: label of positions left out of both terms.

    References:
        Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015, arXiv 1503.02531.

    Example:
        >>> import torch
        >>> loss_fn = KDLoss("generalized_jsd", temperature=2.0, kd_weight=0.5, beta=0.5)
        >>> loss = loss_fn(torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, -100]))
        >>> loss.dim()
        0
    """

    def __init__(self, divergence: str = "forward_kl", *, temperature: float = 4.0,
                 kd_weight: Union[float, Schedule] = 0.9, t_squared: bool = True,
                 reduction: Union[str, Callable] = masked_mean, ignore_index: int = -100, **divergence_kwargs):
        super().__init__()
        if not isinstance(kd_weight, Schedule) and not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        check_divergence_options(divergence, divergence_kwargs)
        self.divergence = get_divergence(divergence).on_logits
        self.divergence_name, self.divergence_kwargs = divergence, divergence_kwargs
        self.temperature, self.kd_weight, self.t_squared = temperature, as_schedule(kd_weight), t_squared
        self.reduction, self.ignore_index = get_reduction(reduction), ignore_index

    def forward(self, logits: Tensor, target: Union[Tensor, DenseLogits, HiddenStates],
                labels: Optional[Tensor] = None, num_items_in_batch=None, *, step: int = 0) -> Tensor:
        """``logits`` (..., C); ``target``: the teacher's (..., C) logits or a dense signal;
        ``labels``: (...) or None (pure distillation); ``step`` for a scheduled weight."""
        weight = self.kd_weight(step)
        mask = None if labels is None else mask_from_labels(labels, self.ignore_index)
        target_logits = as_logits(target).detach()
        values = self.divergence(logits, target_logits, temperature=self.temperature, mask=mask,
                                 **self.divergence_kwargs)  # (...), 0 with a finite gradient off the mask
        distill = apply_reduction(self.reduction, values, mask, num_items_in_batch)
        distill = distill * (self.temperature**2 if self.t_squared else 1.0)
        if labels is None or weight == 1.0:
            return weight * distill
        ce = apply_reduction(self.reduction, cross_entropy_values(logits, labels, self.ignore_index), mask,
                             num_items_in_batch)
        return (1.0 - weight) * ce + weight * distill

    def extra_repr(self) -> str:
        return (f"divergence={self.divergence_name!r}, temperature={self.temperature}, kd_weight={self.kd_weight}, "
                f"t_squared={self.t_squared}, reduction={self.reduction.__name__}")
