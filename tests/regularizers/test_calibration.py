"""SVLS and NACL against hand computations written from the official code (mobarakol/SVLS
svls.py; Bala93/MarginLoss spatial_adaptive_margin.py), MONAI's NACLLoss (zero border),
torch's soft-target cross-entropy and float64 gradcheck; pixel and classwise ECE against
torchmetrics and a hand loop; clear errors."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from divreg.metrics import classwise_ece, expected_calibration_error, pixel_ece
from divreg.regularizers import (NACLLoss, SVLSLoss, nacl_loss, nacl_penalty, neighbour_proportions,
                                 soft_cross_entropy, svls_kernel, svls_targets)
from divreg.schedules import LinearRamp


def _official_kernel(dim: int, sigma: float) -> np.ndarray:
    """svls.py's construction, step by step: Gaussian on the 3^dim grid, normalized; the centre
    set to 1 - centre (the neighbours' sum); divided by the new sum."""
    kernel = np.zeros((3,) * dim)
    for index in itertools.product(range(3), repeat=dim):
        kernel[index] = math.exp(-sum((i - 1) ** 2 for i in index) / (2 * sigma**2))
    kernel /= kernel.sum()
    centre = (1,) * dim
    kernel[centre] = 1 - kernel[centre]
    return kernel / kernel.sum()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_svls_kernel_is_the_official_construction(dim, sigma):
    kernel = svls_kernel(dim, sigma)
    np.testing.assert_allclose(kernel.numpy(), _official_kernel(dim, sigma), rtol=0, atol=1e-7)
    assert abs(float(kernel[(1,) * dim]) - 0.5) < 1e-7 and abs(float(kernel.sum()) - 1) < 1e-6


@pytest.mark.parametrize("dim", [2, 3])
def test_svls_targets_by_hand_with_replicate_padding(dim):
    generator = torch.Generator().manual_seed(dim)
    shape = (2,) + (5,) * dim
    labels = torch.randint(0, 3, shape, generator=generator)
    soft = svls_targets(labels, 3, sigma=1.0)
    kernel = _official_kernel(dim, 1.0)
    assert soft.shape == (2, 3) + (5,) * dim
    torch.testing.assert_close(soft.sum(1), torch.ones(shape), rtol=0, atol=1e-6)
    for b in range(2):
        for pixel in itertools.product(range(5), repeat=dim):
            expected = np.zeros(3)
            for offset in itertools.product((-1, 0, 1), repeat=dim):
                neighbour = tuple(min(max(p + o, 0), 4) for p, o in zip(pixel, offset))  # replicate
                expected[int(labels[(b,) + neighbour])] += kernel[tuple(o + 1 for o in offset)]
            np.testing.assert_allclose(soft[(b, slice(None)) + pixel].numpy(), expected, rtol=0, atol=1e-6)


def test_soft_cross_entropy_and_svls_loss_against_torch_and_gradcheck():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.randint(0, 4, (2, 6, 6), generator=generator)
    soft = svls_targets(labels, 4).double()
    torch.testing.assert_close(soft_cross_entropy(logits, soft), F.cross_entropy(logits, soft, reduction="none"),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(SVLSLoss()(logits, labels), F.cross_entropy(logits, soft), rtol=1e-7, atol=1e-7)
    assert torch.autograd.gradcheck(lambda z: soft_cross_entropy(z, soft), (logits,))
    one_hot = F.one_hot(labels, 4).movedim(-1, 1).double()  # a uniform image: SVLS = one-hot, loss = CE
    uniform = torch.zeros(1, 5, 5, dtype=torch.long)
    torch.testing.assert_close(svls_targets(uniform, 4)[0, 0], torch.ones(5, 5))
    assert one_hot.shape == soft.shape


def _official_tau(labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """spatial_adaptive_margin.py: Unfold(k, padding=k//2) over the label map (zeros, i.e. class 0,
    outside), then sum(window == c) / k^2."""
    batch, height, width = labels.shape
    windows = F.unfold(labels[:, None].double(), k, padding=k // 2).view(batch, k * k, height, width)
    return torch.stack([(windows == c).sum(1).double() / k**2 for c in range(num_classes)], dim=1)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_nacl_background_border_is_the_official_code(kernel_size):
    generator = torch.Generator().manual_seed(kernel_size)
    labels = torch.randint(0, 3, (2, 7, 6), generator=generator)
    logits = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    tau = neighbour_proportions(labels, 3, kernel_size=kernel_size)
    torch.testing.assert_close(tau.double(), _official_tau(labels, 3, kernel_size), rtol=0, atol=1e-7)
    expected = F.cross_entropy(logits, labels) + 0.1 * (_official_tau(labels, 3, kernel_size) - logits).abs().mean()
    torch.testing.assert_close(nacl_loss(logits, labels, kernel_size=kernel_size), expected, rtol=1e-7, atol=1e-7)
    l2 = F.cross_entropy(logits, labels) + 0.1 * (_official_tau(labels, 3, kernel_size) - logits).pow(2).mean()
    torch.testing.assert_close(nacl_loss(logits, labels, kernel_size=kernel_size, distance="l2"), l2, rtol=1e-7,
                               atol=1e-7)
    assert torch.autograd.gradcheck(lambda z: nacl_penalty(z, labels, distance="l2"), (logits,))


@pytest.mark.parametrize("dim, distance", [(2, "l1"), (2, "l2"), (3, "l1")])
def test_nacl_zero_border_equals_monai(dim, distance):
    monai = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(dim)
    shape = (2,) + (6,) * dim
    labels = torch.randint(0, 4, shape, generator=generator)
    logits = torch.randn((2, 4) + (6,) * dim, generator=generator)
    reference = monai.NACLLoss(classes=4, dim=dim, kernel_size=3, distance_type=distance, alpha=0.1)(logits, labels)
    ours = nacl_loss(logits, labels, distance=distance, border="zeros")
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    assert float(neighbour_proportions(labels, 4, border="zeros").sum(1).min()) < 1  # tau leaks at the border


def test_nacl_module_weight_schedule_and_replicate_border():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 1
    tau = neighbour_proportions(labels, 2, border="replicate")
    torch.testing.assert_close(tau[0, 1, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))  # columns 0..3
    logits = torch.randn(1, 2, 4, 4)
    loss = NACLLoss(weight=LinearRamp(0.2, 10))  # 0.02 at step 0, 0.2 from step 9
    torch.testing.assert_close(loss(logits, labels, step=0), nacl_loss(logits, labels, weight=0.02))
    torch.testing.assert_close(loss(logits, labels, step=10), nacl_loss(logits, labels, weight=0.2))


def test_calibration_regularizers_refuse_bad_input():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        neighbour_proportions(labels + 2, 2)
    with pytest.raises(ValueError, match="integer class map"):
        svls_targets(labels.float(), 2)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        neighbour_proportions(labels, 2, kernel_size=4)
    with pytest.raises(ValueError, match="border must be one of"):
        neighbour_proportions(labels, 2, border="wrap")
    with pytest.raises(ValueError, match="SVLS needs dim 2 or 3"):
        svls_kernel(2, sigma=0)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        NACLLoss(weight=-1)
    with pytest.raises(ValueError, match="differ in shape"):
        soft_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


def test_pixel_and_classwise_ece():
    torchmetrics = pytest.importorskip("torchmetrics.functional.classification")
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(3, 4, 8, 8, generator=generator), dim=1)
    labels = torch.randint(0, 4, (3, 8, 8), generator=generator)
    flat_probs, flat_labels = probs.movedim(1, -1).reshape(-1, 4), labels.reshape(-1)
    reference = torchmetrics.multiclass_calibration_error(flat_probs, flat_labels, num_classes=4, n_bins=10, norm="l1")
    assert abs(pixel_ece(probs, labels) - float(reference)) < 1e-6
    assert abs(pixel_ece(probs, labels) - expected_calibration_error(flat_probs, flat_labels)) < 1e-12
    ignore = labels.clone()
    ignore[0] = 255
    assert abs(pixel_ece(probs, ignore, ignore_index=255)
               - expected_calibration_error(flat_probs[64:], flat_labels[64:])) < 1e-12
    expected = 0.0
    for c in range(4):  # by hand: bins of p_c, |sum(1[y=c] - p_c)| per bin / N, averaged over classes
        p = flat_probs[:, c].double()
        bins = torch.clamp(torch.ceil(p * 10).long() - 1, 0, 9)
        expected += sum(abs(float(((flat_labels == c).double() - p)[bins == b].sum())) for b in range(10)) / len(p)
    assert abs(classwise_ece(probs, labels) - expected / 4) < 1e-12
    with pytest.raises(ValueError, match="expected probs"):
        pixel_ece(probs, labels[0])
