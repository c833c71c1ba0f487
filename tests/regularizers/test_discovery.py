"""LegoGCD's LER against a hand loop written from the official train.py (mask, sharp target,
logit adjustment by 0.4 log qhat, mean over every row), the EMA prior, float64 gradcheck."""

import math

import pytest
import torch

from divreg.regularizers import LocalEntropyRegularizer, PriorEMA, known_confident_mask, local_entropy


def _by_hand(logits, unlabelled, prior, num_known, threshold=0.7):
    total = 0.0
    for z, free in zip(logits.tolist(), unlabelled.tolist()):
        p = [math.exp(v / 0.1) for v in z]
        p = [v / sum(p) for v in p]
        if not (free and max(p) >= threshold and p.index(max(p)) < num_known):
            continue
        sharp = [math.exp(v / 0.05) for v in z]
        sharp = [v / sum(sharp) for v in sharp]
        adjusted = [v / 0.05 + 0.4 * math.log(q) for v, q in zip(z, prior)]
        norm = math.log(sum(math.exp(a) for a in adjusted))
        total += -sum(s * (a - norm) for s, a in zip(sharp, adjusted))
    return total / len(logits)


def test_ler_equals_the_official_formula_by_hand():
    generator = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.normalize(torch.randn(12, 6, generator=generator), dim=1) * 0.6  # cosines
    unlabelled = torch.arange(12) % 3 != 0
    prior = torch.softmax(torch.randn(6, generator=generator), 0)
    mask = known_confident_mask(logits, unlabelled, num_known=3, threshold=0.3)
    assert 0 < int(mask.sum()) < 12 and not bool(mask[~unlabelled].any())
    values = local_entropy(logits.double(), mask, prior.double())
    assert abs(float(values.mean()) - _by_hand(logits.double(), unlabelled, prior.tolist(), 3, threshold=0.3)) < 1e-10
    z = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: local_entropy(x, mask, prior.double()), (z,))
    detached = local_entropy(z, mask, prior.double(), detach_target=True).sum()
    (grad_detached,) = torch.autograd.grad(detached, z)
    (grad_full,) = torch.autograd.grad(local_entropy(z, mask, prior.double()).sum(), z)
    assert not torch.allclose(grad_detached, grad_full)  # the official code does not detach: the option matters


def test_module_weight_prior_update_and_errors():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 4, generator=generator)
    unlabelled = torch.ones(8, dtype=torch.bool)
    module = LocalEntropyRegularizer(4, 2, weight=2.0, threshold=0.0)
    expected = 2.0 * local_entropy(logits, known_confident_mask(logits, unlabelled, 2, threshold=0.0),
                                   torch.full((4,), 0.25)).mean()
    torch.testing.assert_close(module(logits, unlabelled), expected)
    prior = PriorEMA(4, 0.999)
    prior.update(logits)
    torch.testing.assert_close(module.prior.value, prior.value)  # updated after the loss, once
    torch.testing.assert_close(prior.value, 0.999 * torch.full((4,), 0.25) + 0.001 * torch.softmax(logits, 1).mean(0))
    with pytest.raises(ValueError, match="num_known must be in"):
        known_confident_mask(logits, unlabelled, 5)
    with pytest.raises(ValueError, match="prior must be"):
        local_entropy(logits, unlabelled, torch.zeros(4))
    with pytest.raises(ValueError, match="momentum must be in"):
        PriorEMA(4, 1.0)
