"""Consistency between the predictions on two views of the same input."""

from __future__ import annotations

from torch import Tensor, nn

from ..divergences import forward_kl


class TwoViewKL(nn.Module):
    r"""KL divergence between the predictions on two augmentations of the same inputs.

    .. math:: \mathcal{L} = w \cdot \overline{\mathrm{KL}}\big(\mathrm{softmax}(z^{(1)} / T) \,\|\,
        \mathrm{softmax}(z^{(2)} / T)\big)

    Gradients flow through both views (neither is a fixed target).

    Args:
        weight: w >= 0.
        temperature: T > 0.

    References:
        Cao et al. "Solving the Catastrophic Forgetting Problem in Generalized Category
        Discovery" (LegoGCD, its dual-view KL term DKL), CVPR 2024, arXiv 2501.05272.
    """

    def __init__(self, *, weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight, self.temperature = weight, temperature

    def forward(self, logits_view1: Tensor, logits_view2: Tensor) -> Tensor:
        """Both (..., C); view 1 plays the target p, view 2 the model q."""
        return self.weight * forward_kl(logits_view2, logits_view1, temperature=self.temperature).mean()
