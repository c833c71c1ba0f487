"""The typed rollout and the shapers: micro-batches are interleaved row slices of every field;
a shaper pipeline on a hand-made rollout equals the library functions called directly (one
process: gather is the identity)."""

import torch

from divreg.rl import (DADS, STCR, GroupAdvantages, MaskCorrectKL, ShapingContext, dads_kl_weights, group_advantages,
                       rollout_from_batch, stcr_advantages)


def _rollout():
    labels = torch.tensor([[-100, 5, 6, 2], [-100, 7, 2, -100], [-100, 5, 5, 5], [-100, 9, 2, -100]])
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": (labels != -100).long(), "labels": labels}
    return rollout_from_batch(batch, torch.tensor([1.0, 0.0, 0.1, 1.0]), [1.0, 0.0, 0.0, 1.0])


def test_micro_batches_are_interleaved_slices_of_every_field():
    rollout = _rollout().replace(advantages=torch.arange(4.0))
    first, second = rollout.micro_batches(2)
    assert first.labels.tolist() == rollout.labels[0::2].tolist() and second.advantages.tolist() == [1.0, 3.0]
    assert first.kl_weights is None and len(first) == 2
    assert rollout.mask.tolist() == [[True, True, True], [True, True, False], [True, True, True], [True, True, False]]


def test_the_shapers_equal_the_functions_they_wrap():
    rollout = _rollout()
    context = ShapingContext(group_size=2, gather=lambda t: t, rank=0)
    shaped = rollout
    for shaper in (GroupAdvantages("group", 1e-4), STCR(1.001), DADS(2.0), MaskCorrectKL()):
        shaped = shaper(shaped, context)
    advantages = group_advantages(rollout.rewards, 2, "group", 1e-4)
    advantages = stcr_advantages(advantages, rollout.mask.sum(-1).double(), rollout.correct, 2, base=1.001)
    torch.testing.assert_close(shaped.advantages, advantages, rtol=0, atol=0)
    weights = dads_kl_weights(rollout.correct, advantages, 2, scale=2.0) * (1 - rollout.correct)
    torch.testing.assert_close(shaped.kl_weights, weights, rtol=0, atol=0)
    assert torch.equal(shaped.rewards, rollout.rewards)  # advantages shapers leave the rewards alone
