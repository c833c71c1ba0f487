"""Schedules: how a loss weight moves with the training step or epoch. A weight anywhere in
divreg is a number or a :class:`Schedule`; stateful schedules also ``observe(metrics)`` and
live in checkpoints (``state_dict`` / ``load_state_dict``)."""

from ._adaptive import AdaptiveKLController, AdaptiveReplayProbability
from ._base import Schedule
from ._ramps import Constant, LinearDecay, LinearRamp, as_schedule

__all__ = ["AdaptiveKLController", "AdaptiveReplayProbability", "Constant", "LinearDecay", "LinearRamp", "Schedule",
           "as_schedule"]
