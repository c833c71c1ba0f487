"""The sampler/trainer mismatch correction (TIS / MIS) against exact enumeration: one-token
completions over a small vocabulary, the trainer pi = softmax(theta), a sampler q != pi. A batch
holding every token once, with advantage A(y) q(y) V, makes GRPOLoss's token mean the exact
expectation over y ~ q, so its gradient is compared with the closed forms in float64."""

import math

import pytest
import torch

from divreg.losses import GRPOLoss, sampler_mismatch, sampler_weights

V = 6


def _setup(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(V, generator=generator, dtype=torch.float64)
    q = torch.softmax(torch.randn(V, generator=generator, dtype=torch.float64) * 1.5, 0)  # the sampler
    advantage = torch.randn(V, generator=generator, dtype=torch.float64)
    return theta, q, advantage


def _loss_gradient(theta, q, advantage, **options):
    """d/dtheta of GRPOLoss on the enumeration batch (every token once, advantage A q V)."""
    theta = theta.clone().requires_grad_(True)
    logprobs = torch.log_softmax(theta, 0)[:, None]  # (V, 1): token y's log pi, one token per completion
    loss = GRPOLoss(**options)
    out = loss(logprobs, None, advantage * q * V, torch.ones(V, 1, dtype=torch.bool), tokens=V, sequences=V,
               sampler_logprobs=q.log()[:, None])
    (gradient,) = torch.autograd.grad(out.loss, theta)
    return gradient


def _expected_gradient(theta, weight):
    """-sum_y weight(y) grad log pi(y), by autograd on the closed form."""
    theta = theta.clone().requires_grad_(True)
    log_pi = torch.log_softmax(theta, 0)
    (gradient,) = torch.autograd.grad(-(weight.detach() * log_pi).sum(), theta)
    return gradient


def test_tis_without_truncation_is_the_on_policy_gradient():
    theta, q, advantage = _setup()
    pi = torch.softmax(theta, 0)
    assert float((pi / q).max()) < 50
    got = _loss_gradient(theta, q, advantage, sampler_correction="tis", sampler_cap=50.0)
    on_policy = _expected_gradient(theta, pi * advantage)  # E_pi[A grad log pi]
    torch.testing.assert_close(got, on_policy, rtol=0, atol=1e-12)
    # closed form of the softmax policy gradient: -pi_j (A_j - E_pi[A])
    torch.testing.assert_close(got, -pi * (advantage - (pi * advantage).sum()), rtol=0, atol=1e-12)


def test_uncorrected_samples_give_the_sampler_gradient_and_truncation_the_capped_one():
    theta, q, advantage = _setup(1)
    pi = torch.softmax(theta, 0)
    ratio = pi / q
    assert float(ratio.max()) > 2 > float(ratio.min())  # some tokens truncated, some not
    none = _loss_gradient(theta, q, advantage)
    torch.testing.assert_close(none, _expected_gradient(theta, q * advantage), rtol=0, atol=1e-12)
    assert float((none - _expected_gradient(theta, pi * advantage)).abs().max()) > 1e-2  # biased: the mismatch
    tis = _loss_gradient(theta, q, advantage, sampler_correction="tis", sampler_cap=2.0)
    torch.testing.assert_close(tis, _expected_gradient(theta, q * ratio.clamp(max=2.0) * advantage), rtol=0,
                               atol=1e-12)
    mis = _loss_gradient(theta, q, advantage, sampler_correction="mis", sampler_cap=2.0)
    kept = (ratio <= 2.0).double()
    torch.testing.assert_close(mis, _expected_gradient(theta, q * ratio * kept * advantage), rtol=0, atol=1e-12)
    floor = _loss_gradient(theta, q, advantage, sampler_correction="mis", sampler_cap=2.0, sampler_floor=0.5)
    kept = ((ratio >= 0.5) & (ratio <= 2.0)).double()
    torch.testing.assert_close(floor, _expected_gradient(theta, q * ratio * kept * advantage), rtol=0, atol=1e-12)


def test_the_kl_term_is_not_weighted():
    theta, q, advantage = _setup(2)
    logprobs = torch.log_softmax(theta, 0)[:, None]
    reference = logprobs.detach() - 0.3
    mask = torch.ones(V, 1, dtype=torch.bool)
    common = dict(tokens=V, sequences=V, ref_logprobs=reference, kl_coef=0.5)
    plain = GRPOLoss()(logprobs, None, advantage, mask, **common)
    weighted = GRPOLoss(sampler_correction="tis")(logprobs, None, advantage, mask, sampler_logprobs=q.log()[:, None],
                                                  **common)
    assert float(plain.kl) == pytest.approx(float(weighted.kl), abs=1e-15)
    assert float(plain.policy_loss) != pytest.approx(float(weighted.policy_loss))


def test_weights_and_mismatch_and_refusals():
    trainer = torch.log(torch.tensor([[0.5, 0.4, 0.1]], dtype=torch.float64))
    sampler = torch.log(torch.tensor([[0.1, 0.4, 0.5]], dtype=torch.float64))
    assert sampler_weights(trainer, sampler, "tis", 2.0).tolist() == [[2.0, 1.0, pytest.approx(0.2)]]
    assert sampler_weights(trainer, sampler, "mis", 2.0, floor=0.5).tolist() == [[0.0, 1.0, 0.0]]
    stats = sampler_mismatch(trainer, sampler, torch.tensor([[True, True, False]]))
    log_ratio = torch.tensor([math.log(5.0), 0.0], dtype=torch.float64)
    assert stats["mismatch_log_ratio"] == pytest.approx(float(log_ratio.mean()))
    assert stats["mismatch_k3"] == pytest.approx(float((log_ratio.exp() - 1 - log_ratio).mean()))
    assert stats["mismatch_max_ratio"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="sampler_correction must be one of"):
        GRPOLoss(sampler_correction="is")
    with pytest.raises(ValueError, match="sampler_floor is the lower bound of masked importance sampling"):
        GRPOLoss(sampler_correction="tis", sampler_floor=0.5)
    with pytest.raises(ValueError, match="sampler_cap must be a finite number > 0"):
        GRPOLoss(sampler_correction="tis", sampler_cap=0)
    with pytest.raises(ValueError, match="needs sampler_logprobs of shape"):
        GRPOLoss(sampler_correction="tis")(trainer, None, torch.ones(1), torch.ones(1, 3, dtype=torch.bool), tokens=3,
                                           sequences=1)
