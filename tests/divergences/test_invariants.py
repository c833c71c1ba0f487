"""Invariants on random inputs (hypothesis): D(p, p) = 0, D >= 0, JSD <= log 2, TV <= 1,
top-k with k = V equals full KL, continuity at the endpoints of the scaled JSD and alpha."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from divreg import divergences as D

from .cases import CASE_IDS, CASES

logit_pairs = st.tuples(
    st.integers(min_value=2, max_value=12),  # vocabulary size
    st.integers(min_value=0, max_value=2**31 - 1),  # seed
    st.floats(min_value=0.1, max_value=20.0),  # logit scale
)


def _pair(vocab_size, seed, scale, rows=4):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(rows, vocab_size, generator=generator, dtype=torch.float64),
            scale * torch.randn(rows, vocab_size, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("name,fn,reference", CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None)
@given(pair=logit_pairs, temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_zero_at_equality_and_nonnegative(name, fn, reference, pair, temperature):
    logits, target_logits = _pair(*pair)
    if name.startswith("topk") and logits.shape[-1] < 3:
        return  # k = 3 needs V >= 3 (checked separately)
    same = fn(logits, logits.clone(), temperature=temperature)
    assert same.abs().max() <= 1e-12
    assert fn(logits, target_logits, temperature=temperature).min() >= -1e-12


@settings(max_examples=50, deadline=None)
@given(pair=logit_pairs)
def test_bounds(pair):
    logits, target_logits = _pair(*pair)
    assert D.generalized_jsd(logits, target_logits, beta=0.5).max() <= math.log(2) + 1e-12
    assert D.total_variation(logits, target_logits).max() <= 1.0 + 1e-12
    for alpha in (0.1, 0.5, 0.9):  # skewed KLs are bounded by -log(alpha)
        assert D.skew_kl(logits, target_logits, alpha=alpha).max() <= -math.log(alpha) + 1e-12
        assert D.skew_reverse_kl(logits, target_logits, alpha=alpha).max() <= -math.log(alpha) + 1e-12


def test_jsd_bound_reached_by_disjoint_supports():
    logits = torch.tensor([0.0, -math.inf], dtype=torch.float64)
    target_logits = torch.tensor([-math.inf, 0.0], dtype=torch.float64)
    assert abs(D.generalized_jsd(logits, target_logits).item() - math.log(2)) < 1e-15
    assert abs(D.total_variation(logits, target_logits).item() - 1.0) < 1e-15


@settings(max_examples=25, deadline=None)
@given(pair=logit_pairs, temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_topk_with_full_k_is_full_kl(pair, temperature):
    logits, target_logits = _pair(*pair)
    full = D.forward_kl(logits, target_logits, temperature=temperature)
    vocab_size = logits.shape[-1]
    for tail in ("bucket", "renormalize"):
        got = D.topk_kl(logits, target_logits, k=vocab_size, tail=tail, temperature=temperature)
        torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-12)


def test_topk_bucket_is_a_lower_bound_increasing_in_k():
    logits, target_logits = _pair(20, seed=3, scale=2.0)
    previous = torch.zeros(4, dtype=torch.float64)
    for k in range(1, 21):
        value = D.topk_kl(logits, target_logits, k=k)
        assert (value >= previous - 1e-12).all()  # coarser partitions never increase KL
        previous = value
    torch.testing.assert_close(previous, D.forward_kl(logits, target_logits), rtol=1e-12, atol=1e-14)


def _assert_linear_approach(values_at, limit, tolerance):
    """|f(eps) - limit| <= 2 C eps + tolerance * limit, with C measured at eps = 1e-3: the
    value approaches its endpoint linearly and keeps full relative precision on the way."""
    slope = (values_at(1e-3) - limit).abs() / 1e-3
    for eps in (1e-5, 1e-7, 1e-9):
        assert ((values_at(eps) - limit).abs() <= 2 * slope * eps + tolerance * limit).all(), eps


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 5e-6)])
def test_scaled_jsd_is_continuous_at_both_ends(dtype, tolerance):
    logits, target_logits = (x.to(dtype) for x in _pair(9, seed=7, scale=2.0))
    kl_pq = D.forward_kl(logits, target_logits)
    kl_qp = D.reverse_kl(logits, target_logits)
    at = lambda beta: D.generalized_jsd(logits, target_logits, beta=beta, scaled=True)  # noqa: E731
    torch.testing.assert_close(at(0.0), kl_pq, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(at(1.0), kl_qp, rtol=tolerance, atol=tolerance)
    _assert_linear_approach(lambda eps: at(eps), kl_pq, tolerance)
    _assert_linear_approach(lambda eps: at(1 - eps), kl_qp, tolerance)


def test_plain_jsd_endpoints_are_zero_without_nan():
    logits = torch.tensor([[0.0, -math.inf, 2.0]], requires_grad=True)
    target_logits = torch.tensor([[1.0, 3.0, -math.inf]])
    for beta in (0.0, 1.0):
        value = D.generalized_jsd(logits, target_logits, beta=beta)
        assert value.item() == 0.0
        (grad,) = torch.autograd.grad(value.sum(), logits)
        assert (grad == 0).all()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 5e-6)])
def test_alpha_divergence_is_continuous_at_its_kl_endpoints(dtype, tolerance):
    logits, target_logits = (x.to(dtype) for x in _pair(9, seed=8, scale=2.0))
    kl_pq = D.forward_kl(logits, target_logits)
    kl_qp = D.reverse_kl(logits, target_logits)
    at = lambda alpha: D.alpha_divergence(logits, target_logits, alpha=alpha)  # noqa: E731
    torch.testing.assert_close(at(1.0), kl_pq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(at(0.0), kl_qp, rtol=1e-12, atol=1e-12)
    for sign in (1, -1):
        _assert_linear_approach(lambda eps: at(1 + sign * eps), kl_pq, tolerance)
        _assert_linear_approach(lambda eps: at(sign * eps), kl_qp, tolerance)
