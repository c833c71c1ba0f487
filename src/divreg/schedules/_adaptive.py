"""Stateful schedules: values that move with what training observes."""

from __future__ import annotations

import math
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


class AdaptiveKLController(Schedule):
    r"""The proportional KL controller of Ziegler et al.: the KL coefficient :math:`\beta` moves
    so that the measured KL tracks a target.

    .. math::
        e = \mathrm{clip}\Big(\frac{\mathrm{KL}}{\mathrm{KL}_{target}} - 1,\ -0.2,\ 0.2\Big),\qquad
        \beta \leftarrow \beta\,\big(1 + e\, n / \mathrm{horizon}\big)

    with ``n`` the number of samples (or steps) the KL was measured over (the official code and
    verl pass the batch size). Each :meth:`observe` with the ``metric`` key (default ``"kl"``)
    applies one update; ``n`` comes from the ``count_metric`` key when present, else 1. The value
    does not depend on the step: it is whatever the updates made it, and it lives in
    checkpoints. Usable for a KL in the loss or in the reward (verl's controller only moves the
    in-reward coefficient).

    Args:
        init: the starting coefficient, > 0 (updates multiply it).
        target: the KL to track, > 0.
        horizon: how many samples a full 20% correction takes, > 0.
        metric: the key of the measured KL in the observed metrics.
        count_metric: the key of ``n``.

    References:
        Ziegler et al. "Fine-Tuning Language Models from Human Preferences", 2019, arXiv
        1909.08593, section 2.2; code github.com/openai/lm-human-preferences
        (``AdaptiveKLController``).

    Example:
        >>> beta = AdaptiveKLController(init=0.1, target=1.0, horizon=100)
        >>> beta.observe({"kl": 3.0, "samples": 10})  # KL far above target: +0.2 * 10 / 100
        >>> round(beta(step=0), 6)
        0.102
    """

    def __init__(self, init: float, target: float, horizon: float, metric: str = "kl", count_metric: str = "samples"):
        for name, value in (("init", init), ("target", target), ("horizon", horizon)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                extra = " (the update multiplies the coefficient, so 0 would stay 0)" if name == "init" else ""
                raise ValueError(f"{name} must be a finite number > 0{extra}, got {value!r}")
        self.value, self.target, self.horizon = float(init), float(target), float(horizon)
        self.metric, self.count_metric = metric, count_metric

    def __call__(self, step: int) -> float:
        return self.value

    def observe(self, metrics: Mapping[str, float]) -> None:
        if self.metric not in metrics:
            return
        kl = float(metrics[self.metric])
        if not math.isfinite(kl):
            raise ValueError(f"AdaptiveKLController observed a non-finite KL ({kl}); check the KL estimate")
        count = float(metrics.get(self.count_metric, 1))
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * count / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping) -> None:
        self.value = float(state["value"])

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"
