"""Schedules: how a loss weight moves with the training step or epoch."""

from ._ramps import Constant, LinearRamp

__all__ = ["Constant", "LinearRamp"]
