"""Classification data: the augmentation of the two-view method."""

import torch

from divreg.data import augment


def test_augment_is_deterministic_and_shifts_images():
    x = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8)
    first = augment(x, torch.Generator().manual_seed(3), max_shift=1, noise_std=0.0)
    second = augment(x, torch.Generator().manual_seed(3), max_shift=1, noise_std=0.0)
    assert torch.equal(first, second)
    for shifted, original in zip(first, x):
        # a shift by (dy, dx) in [-1, 1]^2 keeps a 7x7 block of the original, zero-padded
        matches = [torch.equal(torch.nn.functional.pad(original, (1, 1, 1, 1))[:, 1 + dy:9 + dy, 1 + dx:9 + dx], shifted)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(matches)
