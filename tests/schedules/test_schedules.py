"""Schedules: values, the weight-as-schedule contract of the losses, and stateful schedules'
state through a checkpoint."""

import pytest
import torch

from divreg.losses import KDLoss, LMDistillLoss
from divreg.schedules import AdaptiveReplayProbability, Constant, LinearRamp, Schedule, as_schedule
from divreg.targets import DenseLogits


def test_values():
    assert [Constant(0.3)(step) for step in (0, 10)] == [0.3, 0.3]
    ramp = LinearRamp(0.8, 4)
    assert [ramp(step) for step in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert as_schedule(2)(5) == 2.0 and as_schedule(ramp) is ramp
    for bad in (True, "0.5", None):
        with pytest.raises(ValueError, match="a weight must be a number"):
            as_schedule(bad)
    with pytest.raises(ValueError, match="has no state"):
        Constant(1.0).load_state_dict({"value": 2.0})
    assert Constant(1.0).state_dict() == {} and isinstance(ramp, Schedule)


def test_a_scheduled_weight_equals_the_number_it_takes_at_that_step():
    logits, target = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, -100])
    ramp = LinearRamp(0.9, 3)
    for step in range(4):
        scheduled = KDLoss(temperature=2.0, kd_weight=ramp)(logits, target, labels, step=step)
        fixed = KDLoss(temperature=2.0, kd_weight=ramp(step))(logits, target, labels)
        assert torch.equal(scheduled, fixed)
    lm_labels = labels.view(2, 3)
    student, teacher = DenseLogits(logits.view(2, 3, 5)), DenseLogits(target.view(2, 3, 5))
    scheduled = LMDistillLoss(divergence_weight=ramp, ce_weight=Constant(0.5))(student, teacher, lm_labels, 5, step=1)
    fixed = LMDistillLoss(divergence_weight=ramp(1), ce_weight=0.5)(student, teacher, lm_labels, 5)
    assert torch.equal(scheduled.loss, fixed.loss)


def test_adaptive_replay_probability_rises_with_the_validation_loss_and_survives_a_checkpoint():
    phi = AdaptiveReplayProbability(init=0.0, loss_eps=0.1)
    phi.observe({"accuracy": 0.5})  # no validation loss in these metrics: nothing changes
    assert phi(0) == 0.0 and phi.reference_loss is None
    for loss in (2.0, 2.05, 2.2, 2.25, 2.31):
        phi.observe({"nll": loss})
    assert phi(7) == pytest.approx(0.2) and phi.reference_loss == 2.31
    restored = AdaptiveReplayProbability(init=0.0, loss_eps=0.1)
    restored.load_state_dict(phi.state_dict())
    assert restored(0) == phi(0) and restored.reference_loss == phi.reference_loss
    for _ in range(20):
        phi.observe({"nll": phi.reference_loss + 1.0})
    assert phi(0) == 1.0  # capped
    with pytest.raises(ValueError):
        AdaptiveReplayProbability(init=1.5)


def test_adaptive_kl_controller_on_a_synthetic_kl_sequence():
    """Ziegler et al.'s controller against the formula applied by hand, step by step: the
    error is clipped to +-0.2, scaled by n / horizon; state round-trips through state_dict."""
    import math

    import pytest

    from divreg.schedules import AdaptiveKLController

    controller = AdaptiveKLController(init=0.05, target=2.0, horizon=1000)
    expected = 0.05
    for kl, n in [(10.0, 64), (2.0, 64), (2.5, 32), (0.0, 64), (1.0, 128), (6.0, 1)]:
        controller.observe({"kl": kl, "samples": n})
        expected *= 1 + min(max(kl / 2.0 - 1, -0.2), 0.2) * n / 1000
        assert math.isclose(controller(step=123), expected, rel_tol=1e-15)
    assert math.isclose(expected, 0.05 * (1 + 0.2 * 64 / 1000) * (1 + 0.2 * 32 / 1000) * (1 - 0.2 * 64 / 1000)
                        * (1 - 0.2 * 128 / 1000) * (1 + 0.2 / 1000), rel_tol=1e-15)
    controller.observe({"loss": 1.0})  # no KL reported: no update
    assert math.isclose(controller(0), expected, rel_tol=1e-15)
    restored = AdaptiveKLController(init=1.0, target=2.0, horizon=1000)
    restored.load_state_dict(controller.state_dict())
    assert restored(0) == controller(0)
    with pytest.raises(ValueError, match="non-finite KL"):
        controller.observe({"kl": float("nan")})
    with pytest.raises(ValueError, match="target must be a finite number > 0"):
        AdaptiveKLController(init=0.1, target=0.0, horizon=10)
