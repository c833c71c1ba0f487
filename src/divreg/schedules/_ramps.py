"""Weight schedules: a value as a function of the step (or epoch) counter."""

from __future__ import annotations

import math
from typing import Union

from ._base import Schedule


class Constant(Schedule):
    """``value`` at every step."""

    def __init__(self, value: float):
        if not math.isfinite(value):
            raise ValueError(f"a constant weight must be finite, got {value!r}")
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class LinearRamp(Schedule):
    r"""Linear ramp reaching ``final_value`` at the last of ``total_steps`` steps:

    .. math:: w_t = w_T \cdot \min\big(1, (t + 1) / T\big),\quad t = 0, 1, \ldots

    (PS-KD's :math:`\alpha_t = \alpha_T (t + 1) / T` over epochs; it is never 0, even at t = 0.)

    References:
        Kim et al. "Self-Knowledge Distillation with Progressive Refinement of Targets",
        ICCV 2021, arXiv 2006.12000, eq. (6).
    """

    def __init__(self, final_value: float, total_steps: int):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if not math.isfinite(final_value):
            raise ValueError(f"final_value must be finite, got {final_value!r}")
        self.final_value, self.total_steps = float(final_value), total_steps

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.final_value * min(1.0, (step + 1) / self.total_steps)

    def __repr__(self) -> str:
        return f"LinearRamp(final_value={self.final_value}, total_steps={self.total_steps})"


class LinearDecay(Schedule):
    r"""A coefficient that falls linearly to a floor:

    .. math:: \beta_t = \max(\beta_0 - \delta\, t,\ \beta_{min}),\quad t = 0, 1, \ldots

    (KDRL's KD coefficient: 5e-3 decaying to 1e-3 in the paper as read by others; the rate is not
    confirmed, so it is an argument.)

    References:
        Xu et al. "Unified Knowledge Distillation and Reinforcement Learning" (KDRL), 2025,
        arXiv 2506.02208.
    """

    def __init__(self, start: float, floor: float, delta: float):
        for name, value in (("start", start), ("floor", floor), ("delta", delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if floor > start:
            raise ValueError(f"floor ({floor}) must be <= start ({start})")
        self.start, self.floor, self.delta = float(start), float(floor), float(delta)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return max(self.start - self.delta * step, self.floor)

    def __repr__(self) -> str:
        return f"LinearDecay(start={self.start}, floor={self.floor}, delta={self.delta})"


def as_schedule(weight: Union[float, int, Schedule]) -> Schedule:
    """A weight as a schedule: a number becomes :class:`Constant`; a schedule stays itself.

    Example:
        >>> as_schedule(0.5)(step=10)
        0.5
    """
    if isinstance(weight, Schedule):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"a weight must be a number or a divreg.schedules.Schedule, got {weight!r}")
    return Constant(weight)
