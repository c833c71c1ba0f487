"""Classification data: the augmentation of the two-view method."""

import numpy as np
import pytest
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


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(y_train=a["y_train"][:-5]), "x_train has 40 rows but y_train has 35 labels"),
    (lambda a: a["y_train"].__setitem__(0, 5), r"y_train's labels are \[0, 1, 5\]: they must be 0..K-1"),
    (lambda a: a.update(y_train=a["y_train"] * 2), r"y_train's labels are \[0, 2\]"),
    (lambda a: a["y_test"].__setitem__(0, 2), r"y_test has labels \[2\] that no training example has"),
    (lambda a: a["x_train"].__setitem__((3, 1), np.nan), r"x_train has non-finite values .* rows \[3\]"),
    (lambda a: a["x_test"].__setitem__((0, 0), np.inf), "x_test has non-finite values"),
    (lambda a: a["y_test"].__setitem__(0, -1), "y_test has negative labels"),
    (lambda a: a.update(y_train=a["y_train"].astype(float)), "integer class ids"),
])
def test_bad_arrays_are_refused_before_training(tmp_path, change, message):
    from divreg.data import load_classification_data

    generator = np.random.default_rng(0)
    arrays = {"x_train": generator.normal(size=(40, 3)), "y_train": np.arange(40) % 2,
              "x_test": generator.normal(size=(10, 3)), "y_test": np.arange(10) % 2}
    load_classification_data(_save(tmp_path / "good.npz", arrays))
    change(arrays)
    with pytest.raises(ValueError, match=message):
        load_classification_data(_save(tmp_path / "bad.npz", arrays))


def _save(path, arrays):
    np.savez(path, **arrays)
    return str(path)


def test_per_example_generators_make_each_view_independent_of_its_batch():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    generators = lambda: [torch.Generator().manual_seed(100 + row) for row in range(6)]  # noqa: E731
    whole = augment(x, generators(), max_shift=1, noise_std=0.1)
    halves = torch.cat([augment(x[:3], generators()[:3]), augment(x[3:], generators()[3:])])
    assert torch.equal(whole, halves)  # a row's view depends only on its own generator
    with pytest.raises(ValueError, match="one generator per row"):
        augment(x, generators()[:5])
