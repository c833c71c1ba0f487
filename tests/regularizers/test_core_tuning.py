"""Core-tuning: the focal SupCon loss by hand loops (both reductions), gradcheck; random-pair
mixes weight the partner by lam >= 0.8; hard-pair mixes use the least similar positive and the
most similar negative (a constructed case); soft labels to exact class ids; the total loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from divreg.regularizers import (CoreTuningLoss, focal_supervised_contrastive, hard_pair_mix, random_pair_mix,
                                 soft_label_classes)


def _by_hand(features, labels, tau, reduction):
    z = F.normalize(features, dim=1)
    n, anchors = len(z), []
    for i in range(n):
        others = [k for k in range(n) if k != i]
        norm = math.log(sum(math.exp(float(z[i] @ z[k]) / tau) for k in others))
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        total = 0.0
        for j in positives:
            log_p = float(z[i] @ z[j]) / tau - norm
            total += -(1 - math.exp(log_p)) * log_p
        anchors.append(total / (len(positives) if reduction == "positives" else n))
    return sum(anchors) / len(anchors)


@pytest.mark.parametrize("reduction", ["positives", "row"])
def test_focal_supcon_by_hand(reduction):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(7, 4, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3: anchors without a positive
    value = focal_supervised_contrastive(features, labels, temperature=0.5, reduction=reduction)
    assert abs(float(value) - _by_hand(features, labels, 0.5, reduction)) < 1e-12
    inputs = (features.clone().requires_grad_(),)
    assert torch.autograd.gradcheck(lambda f: focal_supervised_contrastive(f, labels, temperature=0.5), inputs)
    alone = focal_supervised_contrastive(features.requires_grad_(), torch.arange(7))
    assert alone.item() == 0.0 and alone.requires_grad


def test_mixes_and_classes():
    generator = torch.Generator().manual_seed(1)
    features, soft = torch.randn(6, 3, dtype=torch.float64), F.one_hot(torch.arange(6) % 3, 3).double()
    mixed, mixed_soft = random_pair_mix(features, soft, generator=generator)
    for i in range(6):  # mixed = (1 - lam) f_i + lam f_j for some j, lam >= 0.8
        ok = False
        for j in range(6):
            lam = float(((mixed[i] - features[i]) @ (features[j] - features[i])) / (features[j] - features[i]).pow(2).sum()) \
                if j != i else 1.0
            if torch.allclose((1 - lam) * features[i] + lam * features[j], mixed[i], atol=1e-9) and lam >= 0.8 - 1e-9:
                ok = torch.allclose((1 - lam) * soft[i] + lam * soft[j], mixed_soft[i], atol=1e-9) or ok
        assert ok, i
    # anchor 0 (class 0): positives 1 (close) and 2 (far); negatives 3 (close) and 4 (far)
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.95, -0.05], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1])
    one_hot = F.one_hot(labels, 2).double()
    mixed, mixed_soft = hard_pair_mix(points, labels, one_hot, generator=torch.Generator().manual_seed(2))
    lam = float((mixed[0] - points[3]) @ (points[2] - points[3]) / (points[2] - points[3]).pow(2).sum())
    torch.testing.assert_close(mixed[0], lam * points[2] + (1 - lam) * points[3])  # hardest positive 2, negative 3
    torch.testing.assert_close(mixed_soft[0], lam * one_hot[2] + (1 - lam) * one_hot[3])
    classes = soft_label_classes(torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.2, 0.8]]))
    assert classes[0] == classes[2] and classes[1] == classes[3] and len(set(classes.tolist())) == 3


def test_core_tuning_total():
    torch.manual_seed(0)
    classifier, projector = torch.nn.Linear(4, 3), torch.nn.Linear(4, 5)
    features, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = CoreTuningLoss(classifier, projector, 3, eta=0.1)
    value = loss(features, labels, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    soft = F.one_hot(labels, 3).float()
    r = random_pair_mix(features, soft, generator=generator)
    h = hard_pair_mix(features, labels, soft, generator=generator)
    all_features, all_soft = torch.cat([features, r[0], h[0]]), torch.cat([soft, r[1], h[1]])
    expected = -(all_soft * F.log_softmax(classifier(all_features), 1)).sum(1).mean() + 0.1 * \
        focal_supervised_contrastive(projector(all_features), soft_label_classes(all_soft))
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="reduction must be"):
        focal_supervised_contrastive(features, labels, reduction="sum")
