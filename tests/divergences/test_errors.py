"""Every bad input raises a ValueError that names the problem."""

import math

import pytest
import torch

from divreg import divergences as D

from .cases import CASE_IDS, CASES

ALL = [fn for _, fn, _ in CASES]


@pytest.mark.parametrize("fn", ALL, ids=CASE_IDS)
def test_vocab_size_mismatch(fn):
    with pytest.raises(ValueError, match="vocabulary-size mismatch.*V=5.*V=7"):
        fn(torch.randn(2, 5), torch.randn(2, 7))


@pytest.mark.parametrize("fn", ALL, ids=CASE_IDS)
def test_shape_mismatch(fn):
    with pytest.raises(ValueError, match="shape mismatch"):
        fn(torch.randn(2, 5), torch.randn(3, 5))


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan, "2"])
@pytest.mark.parametrize("fn", ALL, ids=CASE_IDS)
def test_bad_temperature(fn, temperature):
    with pytest.raises(ValueError, match="temperature"):
        fn(torch.randn(2, 5), torch.randn(2, 5), temperature=temperature)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("side", ["logits", "target_logits"])
@pytest.mark.parametrize("fn", ALL, ids=CASE_IDS)
def test_nan_or_positive_inf_in_inputs(fn, side, bad):
    x, y = torch.randn(2, 5), torch.randn(2, 5)
    (x if side == "logits" else y)[1, 2] = bad
    with pytest.raises(ValueError, match=f"{side} contains {'NaN' if math.isnan(bad) else '[+]inf'}"):
        fn(x, y)


@pytest.mark.parametrize("fn", ALL, ids=CASE_IDS)
def test_all_neg_inf_row_and_integer_logits(fn):
    x = torch.randn(2, 5)
    x[0] = -math.inf
    with pytest.raises(ValueError, match="every entry is -inf"):
        fn(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match="floating-point"):
        fn(torch.ones(2, 5, dtype=torch.long), torch.randn(2, 5))


@pytest.mark.parametrize("beta", [-0.1, 1.5, math.nan, None])
def test_jsd_beta_out_of_range(beta):
    with pytest.raises(ValueError, match="beta must be a number in \\[0, 1\\]"):
        D.generalized_jsd(torch.randn(5), torch.randn(5), beta=beta)


@pytest.mark.parametrize("fn", [D.skew_kl, D.skew_reverse_kl])
@pytest.mark.parametrize("alpha", [-0.1, 1.01, math.nan])
def test_skew_alpha_out_of_range(fn, alpha):
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        fn(torch.randn(5), torch.randn(5), alpha=alpha)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, "0.5", True])
def test_alpha_divergence_alpha_not_finite(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite real number"):
        D.alpha_divergence(torch.randn(5), torch.randn(5), alpha=alpha)


@pytest.mark.parametrize("k", [0, 6, -1, 2.5])
def test_topk_bad_k(k):
    with pytest.raises(ValueError, match="k must be an integer in \\[1, V=5\\]"):
        D.topk_kl(torch.randn(5), torch.randn(5), k=k)


def test_topk_bad_tail():
    with pytest.raises(ValueError, match="tail must be one of"):
        D.topk_kl(torch.randn(5), torch.randn(5), k=2, tail="drop")


def test_zero_dim_and_empty_vocab():
    with pytest.raises(ValueError, match="at least one"):
        D.forward_kl(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="empty"):
        D.forward_kl(torch.randn(3, 0), torch.randn(3, 0))
