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
    expected = (residual - aux @ decoder.T).pow(2).sum(-1).mean() / (residual - residual.mean(0)).pow(2).sum(-1).mean()
    torch.testing.assert_close(auxk_loss(x, reconstruction, pre, dead, decoder, 2), expected)
    none = auxk_loss(x, reconstruction, pre, torch.zeros(6, dtype=torch.bool), decoder, 2)
    none.backward()
    assert none.item() == 0.0 and pre.grad is not None
    model = TopKSAE(5, 6, 2, dead_after=8)
    z = torch.zeros(4, 6)
    z[:, 0] = 1.0
    model.track(z)
    model.track(z)
    assert model.dead().tolist() == [False, True, True, True, True, True]
    model.decoder.data *= 3
    model.renormalize()
    assert torch.allclose(model.decoder.norm(dim=0), torch.ones(6))
    out = model(x.float())
    expected_pre = torch.relu((x.float() - model.decoder_bias) @ model.encoder.T + model.encoder_bias)
    torch.testing.assert_close(out["z"], topk_by_magnitude(expected_pre, 2))
    with pytest.raises(ValueError, match="k must be in"):
        TopKSAE(5, 6, 7)
