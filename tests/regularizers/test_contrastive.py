"""Focal InfoNCE by hand (gamma 0 = cross-entropy over the similarity logits), gradcheck; mixed
hard negatives are unit convex combinations of two distinct negatives of the same query; seeded."""

import math

import pytest
import torch
import torch.nn.functional as F

from divreg.regularizers import focal_info_nce, mix_hard_negatives


def test_focal_info_nce_by_hand():
    generator = torch.Generator().manual_seed(0)
    q, d = torch.randn(3, 4, dtype=torch.float64, generator=generator), torch.randn(3, 4, dtype=torch.float64,
                                                                                   generator=generator)
    n = torch.randn(3, 2, 4, dtype=torch.float64, generator=generator)
    values = focal_info_nce(q, d, n, temperature=0.1, gamma=0.5)
    for i in range(3):
        cos = lambda a, b: float(F.cosine_similarity(a, b, dim=0))  # noqa: E731
        logits = [cos(q[i], d[i])] + [cos(q[i], d[j]) for j in range(3) if j != i] + [cos(q[i], n[i, h]) for h in range(2)]
        log_p = logits[0] / 0.1 - math.log(sum(math.exp(v / 0.1) for v in logits))
        assert abs(float(values[i]) + (1 - math.exp(log_p)) ** 0.5 * log_p) < 1e-12
    plain = focal_info_nce(q, d, None, temperature=0.1, gamma=0.0)
    logits = F.normalize(q, dim=1) @ F.normalize(d, dim=1).T / 0.1
    torch.testing.assert_close(plain, F.cross_entropy(logits, torch.arange(3), reduction="none"))
    inputs = (q.clone().requires_grad_(), d.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: focal_info_nce(a, b, n, temperature=0.5), inputs)


def test_mixed_hard_negatives():
    negatives = F.normalize(torch.randn(4, 3, 5, dtype=torch.float64), dim=-1)
    mixed = mix_hard_negatives(negatives, 6, generator=torch.Generator().manual_seed(1))
    again = mix_hard_negatives(negatives, 6, generator=torch.Generator().manual_seed(1))
    assert mixed.shape == (4, 6, 5) and torch.equal(mixed, again)
    torch.testing.assert_close(mixed.norm(dim=-1), torch.ones(4, 6, dtype=torch.float64))
    for b in range(4):
        for m in range(6):  # in the span of two distinct negatives of the same query, positive weights
            found = False
            for a in range(3):
                for c in range(3):
                    if a == c:
                        continue
                    basis = torch.stack([negatives[b, a], negatives[b, c]], dim=1)
                    weights = torch.linalg.lstsq(basis, mixed[b, m, :, None]).solution[:, 0]
                    if torch.allclose(basis @ weights, mixed[b, m], atol=1e-9) and bool((weights > 0).all()):
                        found = True
            assert found
    with pytest.raises(ValueError, match="at least 2 hard negatives"):
        mix_hard_negatives(negatives[:, :1], 2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        focal_info_nce(negatives[:, 0], negatives[:, 1], temperature=0)
