r"""Calibration regularizers for dense prediction (segmentation): targets that encode how mixed a
pixel's neighbourhood is.

- **SVLS** (Islam & Glocker, "Spatially Varying Label Smoothing: Capturing Uncertainty from Expert
  Annotations", IPMI 2021, arXiv 2104.05788; official code github.com/mobarakol/SVLS, ``svls.py``):
  soft labels = the one-hot map convolved per class with a 3x3 (or 3x3x3) Gaussian kernel whose
  centre weight is replaced by the sum of its neighbours, normalized to sum 1 (so the centre
  weighs 1/2), with replicate padding; trained with the soft cross-entropy.
- **NACL** (Murugesan et al., "Trust your neighbours: Penalty-based constraints for model
  calibration", MICCAI 2023, arXiv 2303.06268; official code github.com/Bala93/MarginLoss,
  ``calibrate/losses/spatial_adaptive_margin.py``; also MONAI's ``NACLLoss``):
  :math:`L = CE + \lambda \operatorname{mean}_{b,c,x} |\tau_c(y)_x - z_{c,x}|`, with
  :math:`\tau_c(y)_x` the proportion of class c in the k x k window around pixel x and z the
  logits (not probabilities), :math:`\lambda = 0.1`, k = 3, L1 (or L2) distance.

Departures and options: NACL's border. The official code takes the window over the label map
padded with zeros, so pixels outside the image count as class 0 (``border="background"``, the
default: tau sums to 1 everywhere); MONAI pads the one-hot map with zeros (``border="zeros"``: tau
sums to less than 1 at the border). ``border="replicate"`` repeats the edge labels, as SVLS does.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schedules import Schedule, as_schedule

BORDERS = ("background", "zeros", "replicate")
DISTANCES = ("l1", "l2")


def _check_labels(labels: Tensor, num_classes: int, spatial: int) -> None:
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise ValueError(f"labels must be an integer class map, got dtype {labels.dtype}")
    if labels.dim() != spatial + 1:
        raise ValueError(f"labels must be (B, H, W) or (B, D, H, W), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")


def _math(values: Tensor) -> Tensor:
    """float32 for the math, float64 kept (gradcheck); half precision upcast."""
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(B, C, *spatial) float one-hot map of (B, *spatial) labels."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def svls_kernel(dim: int = 2, sigma: float = 1.0, size: int = 3) -> Tensor:
    r"""SVLS's kernel: a Gaussian on a ``size``^dim grid (normalized), its centre weight replaced by
    the sum of its neighbours, the whole divided by its sum (the centre then weighs 1/2).

    Returns:
        (size,) * dim float32 tensor summing to 1.

    Example:
        >>> kernel = svls_kernel()  # 3x3, sigma 1
        >>> round(float(kernel[1, 1]), 4), round(float(kernel.sum()), 4)  # the centre weighs 1/2
        (0.5, 1.0)
    """
    if dim not in (2, 3) or sigma <= 0 or size < 3 or size % 2 == 0:
        raise ValueError(f"SVLS needs dim 2 or 3, sigma > 0 and an odd size >= 3; got {dim}, {sigma}, {size}")
    grid = torch.arange(size, dtype=torch.float64) - size // 2
    squared = sum(torch.meshgrid(*([grid**2] * dim), indexing="ij"))
    kernel = torch.exp(-squared / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    centre = (size // 2,) * dim
    kernel[centre] = 1 - kernel[centre]  # = the sum of the neighbours
    return (kernel / kernel.sum()).float()


def svls_targets(labels: Tensor, num_classes: int, *, sigma: float = 1.0, size: int = 3) -> Tensor:
    """SVLS soft labels: the one-hot map convolved per class with :func:`svls_kernel`, replicate
    padding (each pixel's soft label sums to 1).

    Args:
        labels: (B, H, W) or (B, D, H, W) integer class map.

    Returns:
        (B, C, H, W) or (B, C, D, H, W) float32.

    Example:
        >>> import torch
        >>> targets = svls_targets(torch.tensor([[[0, 1]]]), 2)  # a class-0 pixel left of a class-1 pixel
        >>> [round(v, 4) for v in targets[0, :, 0, 0].tolist()]  # class 1 gets the kernel's right column
        [0.8278, 0.1722]
        >>> round(float(svls_kernel()[:, 2].sum()), 4)
        0.1722
    """
    spatial = labels.dim() - 1
    _check_labels(labels, num_classes, spatial)
    kernel = svls_kernel(spatial, sigma, size).to(labels.device)
    weight = kernel.expand(num_classes, 1, *kernel.shape).contiguous()
    padded = F.pad(_one_hot(labels, num_classes), (size // 2,) * (2 * spatial), mode="replicate")
    convolve = F.conv2d if spatial == 2 else F.conv3d
    return convolve(padded, weight, groups=num_classes)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel :math:`-\\sum_c t_c \\log \\mathrm{softmax}(z)_c` over dim 1 (fp32).

    Args:
        logits, targets: (B, C, *spatial).

    Returns:
        (B, *spatial).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> logits, labels = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 2])
        >>> hard = F.cross_entropy(logits, labels, reduction="none")
        >>> torch.allclose(soft_cross_entropy(logits, F.one_hot(labels, 3).float()), hard)  # one-hot targets
        True
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    logits = _math(logits)
    return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)


def svls_loss(logits: Tensor, labels: Tensor, *, sigma: float = 1.0, size: int = 3) -> Tensor:
    """Per-pixel SVLS loss (soft cross-entropy against :func:`svls_targets`; the official code
    averages it over pixels). Returns (B, *spatial).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
        >>> labels = torch.zeros(1, 1, 2, dtype=torch.long)  # a uniform map: the soft labels are one-hot
        >>> torch.allclose(svls_loss(logits, labels), F.cross_entropy(logits, labels, reduction="none"))
        True
    """
    with torch.no_grad():
        targets = svls_targets(labels, logits.shape[1], sigma=sigma, size=size)
    return soft_cross_entropy(logits, targets)


def neighbour_proportions(labels: Tensor, num_classes: int, *, kernel_size: int = 3,
                          border: str = "background") -> Tensor:
    """NACL's tau: the proportion of each class in the ``kernel_size`` window around every pixel
    (a mean filter over the one-hot map).

    Args:
        labels: (B, H, W) or (B, D, H, W) integer class map.
        border: pixels outside the image count as class 0 (``"background"``, the official code),
            count as nothing (``"zeros"``, MONAI) or repeat the edge (``"replicate"``).

    Returns:
        (B, C, *spatial) float32.

    Example:
        >>> import torch
        >>> labels = torch.ones(1, 2, 2, dtype=torch.long)  # a 2x2 image, all class 1
        >>> tau = neighbour_proportions(labels, 2)  # each window: 4 pixels of class 1, 5 outside (class 0)
        >>> [round(v, 4) for v in tau[0, :, 0, 0].tolist()]
        [0.5556, 0.4444]
        >>> neighbour_proportions(labels, 2, border="replicate")[0, :, 0, 0].tolist()
        [0.0, 1.0]
    """
    spatial = labels.dim() - 1
    _check_labels(labels, num_classes, spatial)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    pad = (kernel_size // 2,) * (2 * spatial)
    one_hot = _one_hot(labels, num_classes)
    if border == "background":
        padded = _one_hot(F.pad(labels.long(), pad, value=0), num_classes)
    else:
        padded = F.pad(one_hot, pad, mode="constant" if border == "zeros" else "replicate")
    pool = F.avg_pool2d if spatial == 2 else F.avg_pool3d
    return pool(padded, kernel_size, stride=1)


def nacl_penalty(logits: Tensor, labels: Tensor, *, kernel_size: int = 3, distance: str = "l1",
                 border: str = "background") -> Tensor:
    r"""NACL's penalty per class and pixel: :math:`|\tau_c(y) - z_c|` (``"l1"``) or its square
    (``"l2"``), on the logits z. Returns (B, C, *spatial); NACL averages it over everything.

    Example:
        >>> import torch
        >>> labels = torch.ones(1, 2, 2, dtype=torch.long)  # all class 1: tau = (0, 1) with replicated borders
        >>> nacl_penalty(torch.zeros(1, 2, 2, 2), labels, border="replicate")[0, :, 0, 0].tolist()  # |tau - z|, z = 0
        [0.0, 1.0]
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    tau = neighbour_proportions(labels, logits.shape[1], kernel_size=kernel_size, border=border)
    logits = _math(logits)
    gap = (tau.to(logits.dtype) - logits).abs()
    return gap if distance == "l1" else gap**2


def nacl_loss(logits: Tensor, labels: Tensor, *, weight: float = 0.1, kernel_size: int = 3, distance: str = "l1",
              border: str = "background") -> Tensor:
    """NACL's scalar loss: mean cross-entropy + ``weight`` * mean :func:`nacl_penalty`.

    Example:
        >>> import torch
        >>> labels = torch.ones(1, 2, 2, dtype=torch.long)  # all class 1: tau = (0, 1) with replicated borders
        >>> logits = torch.zeros(1, 2, 2, 2)  # CE = log 2; mean |tau - z| = 0.5
        >>> round(float(nacl_loss(logits, labels, border="replicate")), 4)  # log 2 + 0.1 * 0.5
        0.7431
    """
    return NACLLoss(weight=weight, kernel_size=kernel_size, distance=distance, border=border)(logits, labels)




class SVLSLoss(torch.nn.Module):
    """SVLS as a module: the mean over pixels of :func:`svls_loss` (the official code's reduction)."""

    def __init__(self, *, sigma: float = 1.0, size: int = 3):
        super().__init__()
        svls_kernel(2, sigma, size)  # validates
        self.sigma, self.size = sigma, size

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return svls_loss(logits, labels, sigma=self.sigma, size=self.size).mean()


class NACLLoss(torch.nn.Module):
    """NACL as a module: mean cross-entropy + ``weight(step)`` * mean :func:`nacl_penalty`; the
    weight a number (0.1, the paper's and the official code's) or a schedule of the step."""

    def __init__(self, *, weight: Union[float, Schedule] = 0.1, kernel_size: int = 3, distance: str = "l1",
                 border: str = "background"):
        super().__init__()
        if not isinstance(weight, Schedule) and not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if distance not in DISTANCES or border not in BORDERS or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"NACL needs distance in {DISTANCES}, border in {BORDERS} and an odd kernel_size; got "
                             f"{distance!r}, {border!r}, {kernel_size}")
        self.weight, self.kernel_size, self.distance, self.border = as_schedule(weight), kernel_size, distance, border

    def forward(self, logits: Tensor, labels: Tensor, *, step: int = 0) -> Tensor:
        ce = F.cross_entropy(_math(logits), labels.long())
        penalty = nacl_penalty(logits, labels, kernel_size=self.kernel_size, distance=self.distance,
                               border=self.border)
        return ce + self.weight(step) * penalty.mean()
