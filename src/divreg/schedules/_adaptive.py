"""Stateful schedules: values that move with what training observes."""

from __future__ import annotations

from typing import Mapping, Optional

from ._base import Schedule


class AdaptiveReplayProbability(Schedule):
    r"""DistiLLM's adaptive probability :math:`\phi` of training on student-generated outputs.

    Starts at ``init`` (the paper: 0). Each observed validation loss is compared with a
    reference (the first one observed): when it is at least ``loss_eps`` above the reference,
    :math:`\phi` rises by ``increment`` (at most 1) and the reference moves to that loss. The
    value does not depend on the step; the recipe decides how :math:`\phi` is used (DistiLLM
    generates fresh outputs with probability :math:`\phi(1 - t/T)` and replays with the rest).

    Args:
        init: starting probability in [0, 1].
        loss_eps: the rise of the validation loss that raises the probability.
        increment: how much it rises (the paper: 0.1).
        metric: the key of the validation loss in the observed metrics.

    References:
        Ko, Kim, Chen, Yun. "DistiLLM: Towards Streamlined Distillation for Large Language
        Models", ICML 2024, arXiv 2402.03898, section 3.2; code github.com/jongwooko/distillm.

    Example:
        >>> phi = AdaptiveReplayProbability(init=0.0, loss_eps=0.1)
        >>> phi.observe({"nll": 2.0}); phi.observe({"nll": 2.3})
        >>> round(phi(step=0), 2)
        0.1
    """

    def __init__(self, init: float = 0.0, loss_eps: float = 0.1, increment: float = 0.1, metric: str = "nll"):
        if not 0.0 <= init <= 1.0 or not 0.0 < increment <= 1.0:
            raise ValueError(f"init must be in [0, 1] and increment in (0, 1], got {init}, {increment}")
        if not loss_eps >= 0:
            raise ValueError(f"loss_eps must be >= 0, got {loss_eps}")
        self.value, self.loss_eps, self.increment, self.metric = float(init), loss_eps, increment, metric
        self.reference_loss: Optional[float] = None

    def __call__(self, step: int) -> float:
        return self.value

    def observe(self, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            return
        loss = float(metrics[self.metric])
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss >= self.reference_loss + self.loss_eps:
            self.value = min(self.value + self.increment, 1.0)
            self.reference_loss = loss

    def state_dict(self) -> dict:
        return {"value": self.value, "reference_loss": self.reference_loss}

    def load_state_dict(self, state: Mapping) -> None:
        self.value, self.reference_loss = state["value"], state["reference_loss"]
