"""The sparse-target KL: equal to top-k KL when the sparse target is a dense target's top-k,
gradients match autograd, and a hand-computed example."""

import math

import pytest
import torch

from divreg.divergences import sparse_kl, topk_kl
from divreg.divergences._sparse import sparse_kl_with_grad


def _dense(seed, shape=(3, 4, 12)):
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=generator, dtype=torch.float64),
            2 * torch.randn(shape, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("tail", ["bucket", "renormalize", "none"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 4, 12])
def test_equals_topk_kl_of_the_dense_target(tail, temperature, k):
    logits, target_logits = _dense(seed=k)
    log_p = torch.log_softmax(target_logits / temperature, -1)
    top_log_p, ids = log_p.topk(k, -1)
    tail_mass = torch.logsumexp(log_p.scatter(-1, ids, -math.inf), -1) if k < 12 else torch.full(log_p.shape[:-1], -math.inf, dtype=torch.float64)
    expected = topk_kl(logits, target_logits, k=k, tail=tail, temperature=temperature)
    for given_tail in (tail_mass, None):  # given, or derived as log(1 - sum p)
        got = sparse_kl(logits, ids, top_log_p, given_tail, tail=tail, temperature=temperature)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_hand_computed_bucket():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    ids = torch.tensor([1])
    logprobs = torch.log(torch.tensor([0.6], dtype=torch.float64))
    expected = 0.6 * math.log(0.6 / 0.25) + 0.4 * math.log(0.4 / 0.75)
    assert abs(sparse_kl(logits, ids, logprobs).item() - expected) < 1e-14


@pytest.mark.parametrize("tail", ["bucket", "renormalize", "none"])
def test_analytic_gradient_matches_autograd(tail):
    logits, target_logits = _dense(seed=9)
    log_p = torch.log_softmax(target_logits, -1)
    top_log_p, ids = log_p.topk(5, -1)
    logits = logits.requires_grad_()
    value = sparse_kl(logits, ids, top_log_p, tail=tail)
    (expected,) = torch.autograd.grad(value.sum(), logits)
    got_value, got = sparse_kl_with_grad(torch.log_softmax(logits.detach(), -1), ids, top_log_p, tail=tail)
    torch.testing.assert_close(got_value, value.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x: sparse_kl(x, ids, top_log_p, tail=tail), (logits,), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


def test_bad_sparse_targets():
    logits = torch.randn(2, 5)
    good_ids, good_lp = torch.tensor([[0, 1], [2, 3]]), torch.log(torch.full((2, 2), 0.3))
    with pytest.raises(ValueError, match="shapes do not fit"):
        sparse_kl(logits, good_ids[:1], good_lp[:1])
    with pytest.raises(ValueError, match="token ids in"):
        sparse_kl(logits, torch.tensor([[0, 5], [1, 2]]), good_lp)
    with pytest.raises(ValueError, match="distinct"):
        sparse_kl(logits, torch.tensor([[1, 1], [2, 3]]), good_lp)
    with pytest.raises(ValueError, match="log-probabilities"):
        sparse_kl(logits, good_ids, torch.zeros(2, 2))  # probabilities 1 + 1 > 1
    with pytest.raises(ValueError, match="tail must be"):
        sparse_kl(logits, good_ids, good_lp, tail="drop")
