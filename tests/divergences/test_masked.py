"""The README's quickstart path, exactly (a divergence with ``mask=``, then ``masked_mean`` with
the same mask), is safe for every divergence: where a masked position is +inf (the target bans
a token the model uses, or the model bans one the target uses) or holds NaN padding logits, the
loss and the gradient are those of the valid positions alone, finite."""

import math

import pytest
import torch

from divreg import divergences as D
from divreg import reductions as R

from .cases import SPECS

WITH_CROSS_ENTROPY = [(case_id, name, options) for case_id, name, options, _ in SPECS] + [
    ("cross_entropy", "cross_entropy", {})]


def _quickstart(name, options, student_logits, teacher_logits, labels):
    """The README's lines, with the divergence of ``name``."""
    mask = R.mask_from_labels(labels)  # ignore_index=-100 masked out
    per_token = getattr(D, name)(student_logits, teacher_logits, **options, temperature=2.0, mask=mask)  # (B, T)
    return R.masked_mean(per_token, mask)


@pytest.mark.parametrize("case_id,name,options", WITH_CROSS_ENTROPY, ids=[c[0] for c in WITH_CROSS_ENTROPY])
def test_the_quickstart_lines_give_the_valid_positions_loss_and_a_finite_gradient(case_id, name, options):
    generator = torch.Generator().manual_seed(7)
    student = torch.randn(2, 5, 9, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 5, 9, generator=generator, dtype=torch.float64)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, -100]])
    valid = labels != -100
    teacher[0, 3, :4] = -math.inf  # the target bans tokens the model uses: reverse KL, alpha < 0 are +inf
    student[1, 4, 5:] = -math.inf  # the model bans tokens the target uses: forward KL, cross-entropy are +inf
    student[0, 4] = math.nan  # padding garbage
    logits = student.clone().requires_grad_()
    loss = _quickstart(name, options, logits, teacher, labels)
    (gradient,) = torch.autograd.grad(loss, logits)
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(gradient).all())
    assert bool((gradient[~valid] == 0).all())
    # the same as the valid positions alone (mask == slicing)
    sliced = student[valid].clone().requires_grad_()
    expected = getattr(D, name)(sliced, teacher[valid], **options, temperature=2.0).mean()
    (expected_gradient,) = torch.autograd.grad(expected, sliced)
    assert abs(float(loss.detach()) - float(expected.detach())) <= 1e-12 * max(1.0, abs(float(expected.detach())))
    torch.testing.assert_close(gradient[valid], expected_gradient, rtol=1e-10, atol=1e-14)


def test_without_the_mask_a_masked_infinite_position_turns_into_nan():
    """Why ``mask=`` is there: the reduction alone cannot stop the divergence's own backward from
    computing 0 * inf at a masked +inf position."""
    student = torch.zeros(1, 2, 3, requires_grad=True)
    teacher = torch.zeros(1, 2, 3)
    teacher[0, 1, 0] = -math.inf
    mask = torch.tensor([[True, False]])
    loss = R.masked_mean(D.reverse_kl(student, teacher), mask)
    (gradient,) = torch.autograd.grad(loss, student)
    assert bool(torch.isnan(gradient).any())
    safe = R.masked_mean(D.reverse_kl(student, teacher, mask=mask), mask)
    assert bool(torch.isfinite(torch.autograd.grad(safe, student)[0]).all())


@pytest.mark.parametrize("mask,message", [
    (torch.ones(2, 4, dtype=torch.bool), r"mask must be a bool tensor of shape \(2, 3\)"),
    (torch.ones(2, 3), r"mask must be a bool tensor of shape \(2, 3\).*torch.float32"),
    ([[True] * 3] * 2, "mask must be a bool tensor .* got list"),
])
def test_a_bad_mask_is_a_clear_error(mask, message):
    with pytest.raises(ValueError, match=message):
        D.forward_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), mask=mask)
