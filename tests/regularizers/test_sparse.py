"""TopK and variational SAEs against hand computations: TopK by magnitude keeps signs, the
variational forward (mu, clamped log-variance, the KL over every latent by torch.distributions),
the KL warm-up, AuxK's normalized residual loss, dead-latent counting, decoder norms; errors."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from divreg.regularizers import TopKSAE, VariationalSAE, auxk_loss, sae_loss, topk_by_magnitude


def test_topk_by_magnitude_keeps_signs():
    z = torch.tensor([[0.5, -3.0, 2.0, -0.1], [1.0, 0.0, -1.5, 4.0]])
    assert topk_by_magnitude(z, 2).tolist() == [[0.0, -3.0, 2.0, 0.0], [0.0, 0.0, -1.5, 4.0]]
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        topk_by_magnitude(z, 5)


def test_variational_forward_kl_and_warmup_by_hand():
    torch.manual_seed(0)
    model = VariationalSAE(6, 10, 3).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.allclose(model.decoder.norm(dim=0), torch.full((10,), 0.1, dtype=torch.float64))
    assert torch.equal(model.encoder, model.decoder.T) and float(model.log_variance_head.bias.detach()[0]) == -2.0
    model.eval()
    out = model(x)
    mean = torch.relu(x @ model.encoder.T + model.encoder_bias)
    log_variance = model.log_variance_head(x).clamp(-6, 2)
    torch.testing.assert_close(out["z"], topk_by_magnitude(mean, 3))  # evaluation: z = mu
    expected_kl = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(out["kl"], expected_kl, rtol=1e-10, atol=1e-10)
    model.train()
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    sampled = mean + torch.randn_like(mean) * (0.5 * log_variance).exp()
    torch.testing.assert_close(out["z"], topk_by_magnitude(sampled, 3))  # training: z = mu + sigma eps
    for step, ramp in ((0, 0.0), (5, 0.5), (10, 1.0), (50, 1.0)):  # warm-up over the first 10% of 100 steps
        torch.manual_seed(2)
        loss, parts = sae_loss(model, x, step=step, total_steps=100, kl_coefficient=7.0, aux_weight=0.0)
        expected = parts["reconstruction"] + 7.0 * ramp * parts["kl"]
        assert abs(loss.item() - expected) < 1e-9, step


def test_fixed_variance_is_an_l2_penalty_and_deterministic():
    torch.manual_seed(0)
    model = VariationalSAE(4, 8, 2, learned_variance=False).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    first, second = model(x), model(x)
    assert torch.equal(first["z"], second["z"])
    mean = torch.relu(x @ model.encoder.T + model.encoder_bias)
    torch.testing.assert_close(first["kl"], 0.5 * mean.pow(2).sum(-1))


def test_auxk_dead_latents_and_topk_baseline():
    torch.manual_seed(0)
    x, reconstruction = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    pre = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    decoder = torch.randn(5, 6, dtype=torch.float64)
    dead = torch.tensor([True, False, True, True, False, False])
    residual = x - reconstruction
    aux = topk_by_magnitude(pre.detach().masked_fill(~dead, 0.0), 2)
    variance = (residual - residual.mean(0)).pow(2).sum(-1).mean() + 1e-8
    expected = (residual - aux @ decoder.T).pow(2).sum(-1).mean() / variance
    torch.testing.assert_close(auxk_loss(x, reconstruction, pre, dead, decoder, 2), expected)
    bias = torch.randn(5, dtype=torch.float64)  # the vSAE's: decoded with the decoder bias
    expected = (residual - aux @ decoder.T - bias).pow(2).sum(-1).mean() / variance
    torch.testing.assert_close(auxk_loss(x, reconstruction, pre, dead, decoder, 2, bias), expected)
    none = auxk_loss(x, reconstruction, pre, torch.zeros(6, dtype=torch.bool), decoder, 2)
    none.backward()
    assert none.item() == 0.0 and pre.grad is not None
    model = TopKSAE(5, 6, 2, dead_after=8)
    fired = torch.tensor([True, False, False, False, False, False])
    model.track(fired, 4)
    model.track(fired, 4)
    assert model.dead().tolist() == [False, True, True, True, True, True]
    model.decoder.data *= 3
    model.renormalize()
    assert torch.allclose(model.decoder.norm(dim=0), torch.ones(6))
    out = model(x.float())
    expected_pre = torch.relu((x.float() - model.decoder_bias) @ model.encoder.T + model.encoder_bias)
    torch.testing.assert_close(out["z"], topk_by_magnitude(expected_pre, 2))
    with pytest.raises(ValueError, match="k must be in"):
        TopKSAE(5, 6, 7)


def test_fired_and_dead_latents_follow_the_reference_code():
    """vsae_topk.py: fired = the batch sum of the kept (sampled) values is > 0, so a latent kept
    only with negative values has not fired; top_k.py: every latent among a row's top k fired,
    even at value 0. The counters take the current batch before AuxK reads them; the default
    window is the paper-era 10M examples."""
    assert TopKSAE(4, 6, 2).dead_after == VariationalSAE(4, 6, 2).dead_after == 10_000_000
    torch.manual_seed(0)
    vsae = VariationalSAE(4, 6, 2, learned_variance=False).double()
    with torch.no_grad():
        vsae.encoder.zero_()
        vsae.encoder_bias.copy_(torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    out = vsae(torch.randn(3, 4, dtype=torch.float64))  # z = mu = relu(b_e): latents 0 and 1 kept, positive
    assert out["fired"].tolist() == [True, True, False, False, False, False]
    noisy = VariationalSAE(4, 6, 2).double().train()  # sampled z = mu + sigma eps can be negative
    with torch.no_grad():
        noisy.encoder.zero_()
        noisy.log_variance_head.weight.zero_()
        noisy.log_variance_head.bias.fill_(2.0)  # sigma = e around mu = 0
    torch.manual_seed(3)
    out = noisy(torch.randn(8, 4, dtype=torch.float64))
    assert torch.equal(out["fired"], out["z"].sum(0) > 0)
    assert bool(((out["z"] != 0).any(0) & ~out["fired"]).any())  # kept somewhere, yet not fired by the rule
    topk = TopKSAE(4, 6, 2)
    pre = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 3.0]])  # the second of the top 2 is a zero
    assert int(topk.fired(pre).sum()) == 2 and bool(topk.fired(pre)[5])
    # order: a latent dead before this batch but firing in it is not dead for this batch's AuxK
    model = TopKSAE(4, 6, 2, dead_after=5)
    model.since_fired.fill_(10)
    x = torch.randn(3, 4)
    fired_now = model(x)["fired"]
    sae_loss(model, x, step=0, total_steps=1)
    assert not bool(model.dead()[fired_now].any()) and bool(model.dead()[~fired_now].all())
