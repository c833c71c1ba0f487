"""The top-k truncation certificate against closed forms in float64: the forward-KL gap is the
tail mass times the KL between the renormalized tails, the top-k gradient is q - p~ (the tail
shaped like the student's), and nothing is lost when k is the whole vocabulary."""

import math

import pytest
import torch

from divreg.targets import truncation_report


def _positions(seed=0, n=5, vocabulary=12):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocabulary, generator=generator, dtype=torch.float64),
            torch.randn(n, vocabulary, generator=generator, dtype=torch.float64) * 2.0)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_the_gap_and_the_cosine_equal_their_closed_forms(k):
    student, teacher = _positions(k)
    report = truncation_report(student, teacher, k)
    p, q = torch.softmax(teacher, -1), torch.softmax(student, -1)
    ids = p.topk(k, -1).indices
    in_top = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True)
    p_tail, q_tail = p.masked_fill(in_top, 0).sum(-1), q.masked_fill(in_top, 0).sum(-1)
    tails_kl = (p / p_tail[:, None] * (torch.log(p / p_tail[:, None]) - torch.log(q / q_tail[:, None]))
                ).masked_fill(in_top, 0).sum(-1)
    assert report["gap"] == pytest.approx(float((p_tail * tails_kl).mean()), rel=1e-10, abs=1e-14)
    full = (p * (p.log() - q.log())).sum(-1)
    assert report["loss_full"] == pytest.approx(float(full.mean()), rel=1e-12)
    assert report["relative_gap"] == pytest.approx(report["gap"] / report["loss_full"], rel=1e-12)
    p_shaped = torch.where(in_top, p, p_tail[:, None] * q / q_tail[:, None])  # the top-k loss's target
    full_grad, topk_grad = q - p, q - p_shaped
    cosine = (full_grad * topk_grad).sum(-1) / (full_grad.norm(dim=-1) * topk_grad.norm(dim=-1))
    assert report["cosine_mean"] == pytest.approx(float(cosine.mean()), rel=1e-10)
    assert report["cosine_min"] == pytest.approx(float(cosine.min()), rel=1e-10)
    assert report["tail_mass_mean"] == pytest.approx(float(p_tail.mean()), rel=1e-10)
    assert report["gap"] >= 0 and report["loss_topk"] <= report["loss_full"] + 1e-15


def test_nothing_is_lost_at_k_equal_to_the_vocabulary_and_more_is_lost_at_smaller_k():
    student, teacher = _positions(3)
    whole = truncation_report(student, teacher, 12)
    assert whole["gap"] == pytest.approx(0.0, abs=1e-12) and whole["cosine_min"] == pytest.approx(1.0, abs=1e-12)
    gaps = [truncation_report(student, teacher, k)["tail_mass_mean"] for k in (1, 2, 4, 8)]
    assert gaps == sorted(gaps, reverse=True)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match=r"must both be \(N, V\)"):
        truncation_report(torch.zeros(2, 3), torch.zeros(2, 4), 1)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 3\]"):
        truncation_report(torch.zeros(2, 3), torch.zeros(2, 3), 4)
    assert math.isfinite(truncation_report(torch.zeros(1, 3), torch.zeros(1, 3), 1)["cosine_min"])
