"""Seeds and batch order: one derivation, reproducible, distinct streams, one batch-size check."""

import itertools

import pytest
import torch

from divreg.training import check_batch_size, derive_seed, epoch_batches, step_batch, uniform_draw


def test_derive_seed_is_the_mixed_radix_fold_and_separates_streams_within_a_run():
    assert derive_seed(3) == 3 and derive_seed(2, 5) == 2 * 7919 + 5
    assert derive_seed(1, 2, 3) == (1 * 7919 + 2) * 7919 + 3
    seeds = {derive_seed(4, step, rank) for step, rank in itertools.product(range(20000), range(4))}
    assert len(seeds) == 20000 * 4  # steps past 7919 stay distinct within one run
    assert 0 <= derive_seed(10**30, 10**6) < 2**63 - 1


def test_epoch_batches_are_a_seeded_permutation_without_the_last_partial_batch():
    batches = epoch_batches(10, 3, seed=2, epoch=1)
    assert batches.shape == (3, 3) and len(set(batches.flatten().tolist())) == 9
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(2 * 7919 + 1))[:9].view(3, 3)
    assert torch.equal(batches, expected)
    assert not torch.equal(batches, epoch_batches(10, 3, seed=2, epoch=2))
    steps = torch.stack([step_batch(10, 3, 2, step) for step in range(3, 6)])  # epoch 1 = steps 3, 4, 5
    assert torch.equal(steps, batches)


def test_uniform_draw_depends_only_on_its_keys():
    assert uniform_draw(0, 5) == uniform_draw(0, 5) != uniform_draw(0, 6)
    assert 0.0 <= uniform_draw(7, 1) < 1.0


@pytest.mark.parametrize("arguments,message", [
    ((0, 10), "batch_size must be >= 1"),
    ((11, 10), "batch_size=11 exceeds the 10 training examples"),
    ((6, 10, 4), r"divisible by processes x micro-batches \(4 x 1\)"),
    ((8, 10, 2, 3), r"\(2 x 3\)"),
])
def test_batch_size_check(arguments, message):
    with pytest.raises(ValueError, match=message):
        check_batch_size(*arguments)
    check_batch_size(8, 10, 2, 2)
