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
    if name != "topk_none":  # a truncated sum of KL terms, not a divergence (see the test below)
        assert fn(logits, target_logits, temperature=temperature).min() >= -1e-12


def test_topk_without_tail_is_the_truncated_sum_and_can_be_negative():
    """OSTQuant's released KL-Top: sum over the target's top-k of p log(p / q) with the
    full-vocabulary probabilities (scipy's rel_entr on the top-k); negative where q puts more
    mass than p on the top-k; the full KL at k = V."""
    from scipy.special import rel_entr

    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    q = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    got = D.topk_kl(q.log(), p.log(), k=1, tail="none")
    assert abs(got.item() - 0.5 * math.log(0.5 / 0.7)) < 1e-15 and got.item() < 0
    logits, target_logits = _pair(11, seed=12, scale=2.0)
    q_np, p_np = torch.softmax(logits, -1).numpy(), torch.softmax(target_logits, -1).numpy()
    top = torch.softmax(target_logits, -1).topk(4, -1).indices.numpy()
    expected = [rel_entr(p_np[row, top[row]], q_np[row, top[row]]).sum() for row in range(4)]
    torch.testing.assert_close(D.topk_kl(logits, target_logits, k=4, tail="none"),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(D.topk_kl(logits, target_logits, k=11, tail="none"),
                               D.forward_kl(logits, target_logits), rtol=1e-12, atol=1e-14)


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
    for tail in ("bucket", "renormalize", "none"):
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


def test_plain_jsd_endpoints_refuse_instead_of_training_nothing():
    """The plain JSD is identically 0 at beta = 0 and 1: every path refuses it with a pointer to
    scaled=True, forward_kl or reverse_kl, instead of a silent zero loss."""
    from divreg.divergences import get_divergence
    from divreg.fused import fused_linear_divergence
    from divreg.losses import KDLoss

    logits = torch.tensor([[0.0, -math.inf, 2.0]], requires_grad=True)
    target_logits = torch.tensor([[1.0, 3.0, -math.inf]])
    log_q, log_p = torch.log_softmax(logits.detach(), -1), torch.log_softmax(target_logits, -1)
    for beta, alternative in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        calls = [lambda: D.generalized_jsd(logits, target_logits, beta=beta),
                 lambda: get_divergence("generalized_jsd").with_grad(log_q, log_p, beta=beta),
                 lambda: KDLoss("generalized_jsd", beta=beta)(logits, target_logits),
                 lambda: fused_linear_divergence(torch.randn(2, 3), torch.randn(5, 3), torch.randn(2, 3),
                                                 torch.randn(5, 3), divergence="generalized_jsd", beta=beta)]
        for call in calls:
            with pytest.raises(ValueError, match=f"scaled=True.*or {alternative}"):
                call()
        scaled = D.generalized_jsd(logits, target_logits, beta=beta, scaled=True)  # the limit, no NaN
        assert bool(torch.isfinite(scaled).all()) or bool((scaled == math.inf).all())


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
