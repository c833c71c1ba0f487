"""Consistency between the predictions on two views of the same input."""

from __future__ import annotations

from typing import Callable, Union

from torch import Tensor, nn

from ..divergences import check_divergence_options, get_divergence
from ..reductions import get_reduction, masked_mean
from ..schedules import Schedule, as_schedule


class TwoViewKL(nn.Module):
    r"""KL divergence between the predictions on two augmentations of the same inputs.

    .. math:: \mathcal{L} = w \cdot \overline{D}\big(\mathrm{softmax}(z^{(2)} / T) \,\|\,
        \mathrm{softmax}(z^{(1)} / T)\big)

    with D the forward KL by default (``KL(p^{(1)} || p^{(2)})``, LegoGCD's DKL). Gradients flow
    through both views (neither is a fixed target).

    Args:
        weight: w >= 0, a number or a schedule of the step.
        temperature: T > 0.
        divergence: any name of :mod:`divreg.divergences`; view 2 is the model, view 1 the target.
        reduction: a reduction of :mod:`divreg.reductions` over the positions.

    References:
        Cao et al. "Solving the Catastrophic Forgetting Problem in Generalized Category
        Discovery" (LegoGCD, its dual-view KL term DKL), CVPR 2024, arXiv 2501.05272.
    """

    def __init__(self, *, weight: Union[float, Schedule] = 1.0, temperature: float = 1.0,
                 divergence: str = "forward_kl", reduction: Union[str, Callable] = masked_mean, **divergence_kwargs):
        super().__init__()
        if not isinstance(weight, Schedule) and not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight, self.temperature = as_schedule(weight), temperature
        check_divergence_options(divergence, divergence_kwargs)
        self.divergence, self.divergence_kwargs = get_divergence(divergence).on_logits, divergence_kwargs
        self.reduction = get_reduction(reduction)

    def forward(self, logits_view1: Tensor, logits_view2: Tensor, *, step: int = 0) -> Tensor:
        """Both (..., C); view 1 plays the target p, view 2 the model q."""
        values = self.divergence(logits_view2, logits_view1, temperature=self.temperature, **self.divergence_kwargs)
        return self.weight(step) * self.reduction(values)
