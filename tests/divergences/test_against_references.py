"""Values of every divergence against independent references: exact (mpmath) definitions,
scipy and torch.distributions; at temperatures 0.5, 1, 2 and with extreme logits."""

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import torch

from divreg import divergences as D

from .. import reference as ref
from .cases import CASE_IDS, CASES

TEMPERATURES = [0.5, 1.0, 2.0]


def _random_logits(seed, shape=(3, 4, 7), scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return (
        scale * torch.randn(shape, generator=generator, dtype=torch.float64),
        scale * torch.randn(shape, generator=generator, dtype=torch.float64),
    )


def _extreme_logits():
    """Rows with entries of +-1e4 and moderate ones mixed: probabilities below 1e-4000."""
    logits = torch.tensor(
        [[1e4, -1e4, 0.0, 3.0, -2.0], [-1e4, 1e4, 1e4, 5.0, 0.0], [2.0, 1.0, 0.0, -1.0, 1e4]],
        dtype=torch.float64,
    )
    target_logits = torch.tensor(
        [[1e4, 1e4, -1e4, 1.0, 2.0], [-1e4, 1e4, 0.0, 1.0, 2.0], [1e4, -3.0, 0.5, 1e4, 0.0]],
        dtype=torch.float64,
    )
    return logits, target_logits


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("name,fn,reference", CASES, ids=CASE_IDS)
def test_matches_exact_reference(name, fn, reference, temperature):
    logits, target_logits = _random_logits(seed=len(name))
    expected = ref.rowwise(reference, logits, target_logits, temperature)
    got = fn(logits, target_logits, temperature=temperature)
    assert got.shape == logits.shape[:-1]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("name,fn,reference", CASES, ids=CASE_IDS)
def test_extreme_logits_match_exact_reference(name, fn, reference, temperature):
    logits, target_logits = _extreme_logits()
    expected = ref.rowwise(reference, logits, target_logits, temperature)
    got = fn(logits, target_logits, temperature=temperature)
    # alpha > 1 or < 0 reach values like exp(1e4) here, beyond float64: both sides are inf
    np.testing.assert_array_equal(torch.isfinite(got).numpy(), np.isfinite(expected))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    got32 = fn(logits.float(), target_logits.float(), temperature=temperature)
    assert got32.dtype == torch.float32
    expected32 = np.where(np.abs(expected) < np.finfo(np.float32).max, expected, np.inf)
    np.testing.assert_array_equal(torch.isfinite(got32).numpy(), np.isfinite(expected32))
    np.testing.assert_allclose(got32.double().numpy(), expected32, rtol=2e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kl_against_scipy_and_torch_distributions(temperature):
    logits, target_logits = _random_logits(seed=1)
    q = scipy.special.softmax(logits.numpy() / temperature, axis=-1)
    p = scipy.special.softmax(target_logits.numpy() / temperature, axis=-1)
    np.testing.assert_allclose(
        D.forward_kl(logits, target_logits, temperature=temperature).numpy(),
        scipy.special.rel_entr(p, q).sum(-1), rtol=1e-12, atol=1e-14,
    )
    np.testing.assert_allclose(
        D.reverse_kl(logits, target_logits, temperature=temperature).numpy(),
        scipy.special.kl_div(q, p).sum(-1), rtol=1e-12, atol=1e-14,
    )
    dist_q = torch.distributions.Categorical(logits=logits / temperature)
    dist_p = torch.distributions.Categorical(logits=target_logits / temperature)
    torch.testing.assert_close(
        D.forward_kl(logits, target_logits, temperature=temperature),
        torch.distributions.kl_divergence(dist_p, dist_q), rtol=1e-12, atol=1e-14,
    )


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_jsd_half_against_scipy_jensenshannon(temperature):
    logits, target_logits = _random_logits(seed=2)
    q = scipy.special.softmax(logits.numpy() / temperature, axis=-1)
    p = scipy.special.softmax(target_logits.numpy() / temperature, axis=-1)
    expected = scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2  # scipy returns the sqrt
    got = D.generalized_jsd(logits, target_logits, beta=0.5, temperature=temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_total_variation_and_skew_against_hand_formulas():
    logits, target_logits = _random_logits(seed=3)
    q = scipy.special.softmax(logits.numpy(), axis=-1)
    p = scipy.special.softmax(target_logits.numpy(), axis=-1)
    np.testing.assert_allclose(D.total_variation(logits, target_logits).numpy(),
                               0.5 * np.abs(p - q).sum(-1), rtol=1e-12, atol=1e-15)
    a = 0.3
    np.testing.assert_allclose(D.skew_kl(logits, target_logits, alpha=a).numpy(),
                               scipy.special.rel_entr(p, a * p + (1 - a) * q).sum(-1), rtol=1e-10)
    np.testing.assert_allclose(D.skew_reverse_kl(logits, target_logits, alpha=a).numpy(),
                               scipy.special.rel_entr(q, (1 - a) * p + a * q).sum(-1), rtol=1e-10)


def test_alpha_half_is_four_squared_hellinger():
    logits, target_logits = _random_logits(seed=4)
    q = scipy.special.softmax(logits.numpy(), axis=-1)
    p = scipy.special.softmax(target_logits.numpy(), axis=-1)
    hellinger_sq = 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)
    np.testing.assert_allclose(D.alpha_divergence(logits, target_logits, alpha=0.5).numpy(),
                               4 * hellinger_sq, rtol=1e-10)


def test_banned_tokens_give_finite_correct_values():
    """-inf logits on the same tokens on both sides (banned tokens): 0 log 0 = 0, finite."""
    inf = math.inf
    logits = torch.tensor([[0.3, -inf, 1.0, -inf, -0.5]], dtype=torch.float64, requires_grad=True)
    target_logits = torch.tensor([[1.2, -inf, -0.7, -inf, 0.1]], dtype=torch.float64)
    for name, fn, reference in CASES:
        got = fn(logits, target_logits)
        expected = ref.rowwise(reference, logits.detach(), target_logits)
        np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-14, err_msg=name)
        (grad,) = torch.autograd.grad(got.sum(), logits)
        assert torch.isfinite(grad).all(), name
        assert grad[0, 1] == 0 and grad[0, 3] == 0, name


def test_target_zero_only_is_finite_where_the_divergence_is():
    """The target bans a token the model does not: forward KL, JSD, skew, TV, alpha in (0, 1)
    stay finite and exact; reverse KL is +inf (its true value), never nan."""
    inf = math.inf
    logits = torch.tensor([[0.3, 0.2, 1.0]], dtype=torch.float64)
    target_logits = torch.tensor([[1.2, -inf, -0.7]], dtype=torch.float64)
    for name, fn, reference in CASES:
        got = fn(logits, target_logits)
        expected = ref.rowwise(reference, logits, target_logits)
        assert not torch.isnan(got).any(), name
        if math.isinf(expected[0]):
            assert got.item() == inf, name
        else:
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14, err_msg=name)
    assert D.reverse_kl(logits, target_logits).item() == inf


def test_dim_argument_and_low_precision_inputs():
    logits, target_logits = _random_logits(seed=5, shape=(2, 6, 3))
    moved = D.forward_kl(logits.transpose(1, 2), target_logits.transpose(1, 2), dim=1)
    torch.testing.assert_close(moved, D.forward_kl(logits, target_logits), rtol=1e-12, atol=1e-14)
    got = D.generalized_jsd(logits.bfloat16(), target_logits.bfloat16())
    assert got.dtype == torch.float32
    expected = D.generalized_jsd(logits.bfloat16().double(), target_logits.bfloat16().double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
