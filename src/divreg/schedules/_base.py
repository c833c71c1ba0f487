"""The schedule protocol: a loss weight (or a probability) as a function of the step, with
optional state that moves with observed metrics and is saved in checkpoints."""

from __future__ import annotations

from typing import Mapping


class Schedule:
    """Base class of every schedule.

    ``schedule(step)`` is the value at a step (0-based). A *stateful* schedule also learns from
    what training reports: :meth:`observe` takes a mapping of metric names to numbers (e.g. a
    validation loss, a measured KL) and may change later values; :meth:`state_dict` /
    :meth:`load_state_dict` carry that state through checkpoints, so a resumed run continues
    with the same values. Stateless schedules inherit the no-op versions.
    """

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Learn from metrics reported during training (no-op for stateless schedules)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got {dict(state)!r}")
