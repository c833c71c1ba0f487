"""ULD: sorted-probability distance against a direct formula, invariances, answer alignment."""

import numpy as np
import pytest
import scipy.special
import torch

from divreg.divergences import sorted_probability_l1
from divreg.losses import ULDLoss, align_answer_positions


def test_matches_direct_formula_with_different_vocab_sizes():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    target_logits = torch.randn(3, 11, generator=generator, dtype=torch.float64)
    got = sorted_probability_l1(logits, target_logits, temperature=2.0)
    for row in range(3):
        q = np.sort(scipy.special.softmax(logits[row].numpy() / 2))[::-1]
        p = np.sort(scipy.special.softmax(target_logits[row].numpy() / 2))[::-1]
        q = np.pad(q, (0, 4))
        assert abs(got[row].item() - np.abs(q - p).sum()) < 1e-14


def test_permutation_invariance_and_bounds():
    logits = torch.randn(4, 9, dtype=torch.float64)
    permuted = logits[:, torch.randperm(9)]
    assert sorted_probability_l1(logits, permuted).abs().max() < 1e-14  # forgets token identity
    far = sorted_probability_l1(torch.tensor([50.0, 0.0, 0.0]), torch.zeros(30))
    assert 0 <= far.item() <= 2.0


def test_answer_alignment_and_loss():
    student_mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    teacher_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    s_keep, t_keep = align_answer_positions(student_mask, teacher_mask)
    assert s_keep.tolist() == [[False, True, True, True, False], [False, False, True, True, False]]
    assert t_keep.tolist() == [[False, False, True, True, True, False], [True, True, False, False, False, False]]
    student_logits = torch.randn(2, 5, 6, requires_grad=True)
    teacher_logits = torch.randn(2, 6, 9)
    loss = ULDLoss(temperature=1.0)(student_logits, student_mask, teacher_logits, teacher_mask)
    expected = sorted_probability_l1(student_logits[s_keep], teacher_logits[t_keep]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student_logits.grad[~s_keep].abs().sum() == 0 and student_logits.grad[s_keep].abs().sum() > 0
    empty = ULDLoss()(student_logits, torch.zeros_like(student_mask), teacher_logits, teacher_mask)
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="leading dims differ"):
        sorted_probability_l1(torch.randn(2, 3), torch.randn(3, 3))
