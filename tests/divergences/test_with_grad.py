"""The analytic value-and-gradient forms (used by the fused kernel) against autograd of the
public functions, in float64: random, extreme and banned-token inputs, several temperatures,
plus the endpoint options (scaled JSD beta in {0, 1}, alpha in {0, 1}, top-k with k = V)."""

import math

import pytest
import torch

from divreg.divergences import get_divergence
from divreg.divergences.kernels import Scratch

from .cases import SPECS

EXTRA_SPECS = [
    ("jsd_beta0_scaled", "generalized_jsd", {"beta": 0.0, "scaled": True}),
    ("jsd_beta1_scaled", "generalized_jsd", {"beta": 1.0, "scaled": True}),
    ("jsd_beta1e-7_scaled", "generalized_jsd", {"beta": 1e-7, "scaled": True}),
    ("alpha_0", "alpha_divergence", {"alpha": 0.0}),
    ("alpha_1", "alpha_divergence", {"alpha": 1.0}),
    ("alpha_1e-7", "alpha_divergence", {"alpha": 1e-7}),
    ("topk_full", "topk_kl", {"k": 6}),
    ("topk_full_renorm", "topk_kl", {"k": 6, "tail": "renormalize"}),
    ("topk_full_none", "topk_kl", {"k": 6, "tail": "none"}),
    ("skew_kl_0", "skew_kl", {"alpha": 0.0}),
    ("skew_reverse_kl_1", "skew_reverse_kl", {"alpha": 1.0}),
]
ALL_SPECS = [spec[:3] for spec in SPECS] + EXTRA_SPECS
IDS = [spec[0] for spec in ALL_SPECS]


def _check(name, options, logits, target_logits, temperature, finite_only=None):
    divergence = get_divergence(name)
    logits = logits.clone().requires_grad_()
    expected = divergence.on_logits(logits, target_logits, temperature=temperature, **options)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    log_q = torch.log_softmax(logits.detach() / temperature, -1)
    log_p = torch.log_softmax(target_logits / temperature, -1)
    value, grad = divergence.with_grad(log_q, log_p, **options)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-10, atol=1e-12)
    mask = torch.ones_like(grad, dtype=torch.bool) if finite_only is None else finite_only
    torch.testing.assert_close((grad / temperature)[mask], expected_grad[mask], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_random_logits(case_id, name, options, temperature):
    generator = torch.Generator().manual_seed(5)
    logits = 2 * torch.randn(3, 4, 6, generator=generator, dtype=torch.float64)
    target_logits = 2 * torch.randn(3, 4, 6, generator=generator, dtype=torch.float64)
    _check(name, options, logits, target_logits, temperature)


@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_extreme_logits(case_id, name, options):
    if name == "alpha_divergence" and not 0 <= options["alpha"] <= 1:
        pytest.skip("alpha outside [0, 1] is exp(1e4) on these inputs")
    logits = torch.tensor([[1e4, -1e4, 0.3, 3.0, -2.0, 1.0], [5.0, 1e4, 1e4 - 1.0, 0.0, 1.0, -1e4]],
                          dtype=torch.float64)
    target_logits = torch.tensor([[1e4 - 0.5, 1e4, -1e4, 1.0, 2.0, 0.0], [0.0, 1e4 - 2.0, 1e4, 1.0, 2.5, 1e4]],
                                 dtype=torch.float64)
    _check(name, options, logits, target_logits, 1.0)


@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_banned_tokens(case_id, name, options):
    inf = math.inf
    logits = torch.tensor([[0.3, -inf, 1.0, 0.2, -0.5, 1.5]], dtype=torch.float64)
    target_logits = torch.tensor([[1.2, -inf, -0.7, 0.9, 0.1, -1.0]], dtype=torch.float64)
    _check(name, options, logits, target_logits, 1.0, finite_only=torch.isfinite(logits))


@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_overwrite_inputs_gives_the_same_result(case_id, name, options):
    generator = torch.Generator().manual_seed(6)
    log_q = torch.log_softmax(3 * torch.randn(5, 9, generator=generator, dtype=torch.float64), -1)
    log_p = torch.log_softmax(3 * torch.randn(5, 9, generator=generator, dtype=torch.float64), -1)
    with_grad = get_divergence(name).with_grad
    value, grad = with_grad(log_q, log_p, **options)
    value_reusing, grad_reusing = with_grad(log_q.clone(), log_p.clone(), overwrite_inputs=True, **options)
    torch.testing.assert_close(value_reusing, value, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grad_reusing, grad, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_float32_agrees_with_float64(case_id, name, options):
    """The lean forms used for mid-range beta / alpha trade the endpoint-exact evaluation for
    speed; in float32 they stay within 2e-5 of float64 on realistic log-probs."""
    if name == "alpha_divergence" and not 0 <= options["alpha"] <= 1:
        pytest.skip("alpha outside [0, 1] is unbounded")
    generator = torch.Generator().manual_seed(7)
    logits = 3 * torch.randn(64, 500, generator=generator, dtype=torch.float64)
    target_logits = logits + torch.randn(64, 500, generator=generator, dtype=torch.float64)  # close: small values
    with_grad = get_divergence(name).with_grad
    value64, grad64 = with_grad(torch.log_softmax(logits, -1), torch.log_softmax(target_logits, -1), **options)
    value32, grad32 = with_grad(torch.log_softmax(logits.float(), -1), torch.log_softmax(target_logits.float(), -1),
                                **options)
    assert ((value32.double() - value64).abs() <= 2e-5 * value64.abs() + 1e-6).all()
    assert (grad32.double() - grad64).abs().max() <= 2e-5 * grad64.abs().max() + 1e-7


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_scratch_gives_the_same_result_and_allocates_once(case_id, name, options, overwrite):
    """With a ``Scratch`` (as the fused kernel passes), the forms give the same values and
    gradients as with fresh temporaries, on a large block then a smaller one, even when the
    buffers hold NaN from before; the second block allocates no new buffer; inputs stay intact
    unless ``overwrite_inputs``."""
    generator = torch.Generator().manual_seed(8)
    with_grad = get_divergence(name).with_grad
    scratch = Scratch()
    for rows in (7, 4):
        log_q = torch.log_softmax(3 * torch.randn(rows, 9, generator=generator, dtype=torch.float64), -1)
        log_p = torch.log_softmax(3 * torch.randn(rows, 9, generator=generator, dtype=torch.float64), -1)
        value, grad = with_grad(log_q, log_p, **options)
        for buffer in scratch._buffers.values():
            buffer.fill_(math.nan)
        buffers_before = {slot: buffer.data_ptr() for slot, buffer in scratch._buffers.items()}
        q_in, p_in = log_q.clone(), log_p.clone()
        value_s, grad_s = with_grad(q_in, p_in, overwrite_inputs=overwrite, scratch=scratch, **options)
        torch.testing.assert_close(value_s, value, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(grad_s, grad, rtol=1e-14, atol=1e-15)
        if not overwrite:
            assert torch.equal(q_in, log_q) and torch.equal(p_in, log_p)
        if rows == 4:
            assert {slot: buffer.data_ptr() for slot, buffer in scratch._buffers.items()} == buffers_before


@pytest.mark.parametrize("case_id,name,options", ALL_SPECS, ids=IDS)
def test_float32_underflow_agrees_with_float64(case_id, name, options):
    """Log-probs of -95 (a float32 subnormal probability) and -120 (exactly 0 in float32, finite
    in float64) on both sides, as the long tail of a large vocabulary at a low temperature gives:
    the float32 forms (the skew KLs' probability-space mixture clamps it at the smallest normal
    float) stay within float32 rounding of float64, with no NaN."""
    if name == "alpha_divergence" and not 0 <= options["alpha"] <= 1:
        pytest.skip("alpha outside [0, 1] is unbounded")
    generator = torch.Generator().manual_seed(9)
    logits = 3 * torch.randn(8, 200, generator=generator, dtype=torch.float64)
    target_logits = logits + torch.randn(8, 200, generator=generator, dtype=torch.float64)
    for tail, offset in ((slice(150, 175), -95.0), (slice(175, 200), -120.0)):
        logits[:, tail] += offset
        target_logits[:, tail] += offset
    with_grad = get_divergence(name).with_grad
    value64, grad64 = with_grad(torch.log_softmax(logits, -1), torch.log_softmax(target_logits, -1), **options)
    value32, grad32 = with_grad(torch.log_softmax(logits.float(), -1), torch.log_softmax(target_logits.float(), -1),
                                **options)
    assert torch.isfinite(value32).all() and torch.isfinite(grad32).all()
    assert ((value32.double() - value64).abs() <= 2e-5 * value64.abs() + 1e-6).all()
    assert (grad32.double() - grad64).abs().max() <= 2e-5 * grad64.abs().max() + 1e-7
