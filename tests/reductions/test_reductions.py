"""Reductions against slicing and loops; gradient accumulation invariance; empty masks."""

import math

import pytest
import torch

from divreg.reductions import mask_from_labels, masked_mean, per_sequence_mean, reduce, sum_over_items


def _batch(seed=0, shape=(4, 7)):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 10, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < 0.4] = -100
    labels[2] = -100  # one sequence with no valid token
    return values, labels


def test_mask_from_labels():
    labels = torch.tensor([[1, -100, 3], [-100, -100, 0]])
    assert mask_from_labels(labels).tolist() == [[True, False, True], [False, False, True]]
    assert mask_from_labels(labels, ignore_index=0).tolist() == [[True, True, True], [True, True, False]]
    with pytest.raises(ValueError, match="integer"):
        mask_from_labels(torch.zeros(3))


def test_masked_mean_equals_slicing():
    values, labels = _batch()
    mask = mask_from_labels(labels)
    torch.testing.assert_close(masked_mean(values, mask), values[mask].mean(), rtol=1e-15, atol=0)
    torch.testing.assert_close(masked_mean(values), values.mean(), rtol=1e-15, atol=0)


def test_per_sequence_mean_equals_loop():
    values, labels = _batch()
    mask = mask_from_labels(labels)
    means = [values[b][mask[b]].mean() for b in range(values.shape[0]) if mask[b].any()]
    torch.testing.assert_close(per_sequence_mean(values, mask), torch.stack(means).mean(), rtol=1e-14, atol=0)


def test_masked_positions_are_never_read():
    values, labels = _batch()
    mask = mask_from_labels(labels)
    for reduction in ("mean", "sequence_mean", "sum"):
        poisoned = torch.where(mask, values, torch.tensor(math.nan, dtype=values.dtype))
        result = reduce(poisoned, mask, reduction)
        assert torch.isfinite(result)
        (grad,) = torch.autograd.grad(result, values)
        assert torch.isfinite(grad).all() and (grad[~mask] == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sequence_mean", "sum"])
def test_all_masked_is_a_zero_that_keeps_the_graph(reduction):
    values = torch.full((3, 4), math.inf, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    kwargs = {"num_items_in_batch": 5} if reduction == "sum" else {}
    result = reduce(values, mask, reduction, **kwargs)
    assert result.item() == 0.0 and result.requires_grad
    result.backward()
    assert (values.grad == 0).all()


@pytest.mark.parametrize("splits", [[8], [2, 2, 2, 2], [1, 3, 4], [5, 3]])
def test_sum_over_items_is_invariant_to_micro_batching(splits):
    """Accumulating micro-batch losses normalized by the global token count gives the
    value and gradient of the token mean over the whole batch, however it is split."""
    values, labels = _batch(seed=3, shape=(8, 5))
    mask = mask_from_labels(labels)
    full = masked_mean(values, mask)
    (full_grad,) = torch.autograd.grad(full, values)
    num_items = int(mask.sum())
    total, start = 0.0, 0
    for size in splits:
        total = total + sum_over_items(values[start:start + size], mask[start:start + size], num_items)
        start += size
    (split_grad,) = torch.autograd.grad(total, values)
    torch.testing.assert_close(total, full, rtol=1e-14, atol=0)
    torch.testing.assert_close(split_grad, full_grad, rtol=1e-14, atol=0)
    # a naive per-micro-batch mean, averaged, differs when token counts differ
    if len(splits) > 1:
        naive = sum(masked_mean(values[s:s + n], mask[s:s + n]) for s, n in
                    zip([sum(splits[:i]) for i in range(len(splits))], splits)) / len(splits)
        assert abs(naive.item() - full.item()) > 1e-6


def test_sum_over_items_accepts_tensor_count_and_rejects_bad_counts():
    values = torch.ones(2, 3)
    assert sum_over_items(values, num_items_in_batch=torch.tensor(4)).item() == 1.5
    assert sum_over_items(values).item() == 6.0
    for bad in (0, -2, torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="num_items_in_batch must be one positive number"):
            sum_over_items(values, num_items_in_batch=bad)


def test_reduce_validation():
    values = torch.ones(2, 3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce(values, reduction="median")
    with pytest.raises(ValueError, match="only applies to reduction='sum'"):
        reduce(values, reduction="mean", num_items_in_batch=3)
    with pytest.raises(ValueError, match="mask shape"):
        reduce(values, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        reduce(values, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(B, T, ...\)"):
        per_sequence_mean(torch.ones(3))
    masked = reduce(torch.tensor([[1.0, math.nan]]), torch.tensor([[True, False]]), "none")
    assert masked.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("reduction,count", [("mean", None), ("sequence_mean", None), ("sequence_mean", 5),
                                             ("sum", None), ("sum", 17)])
def test_position_weights_reproduce_each_reduction(reduction, count):
    from divreg.reductions import get_reduction, position_weights

    generator = torch.Generator().manual_seed(4)
    values = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=generator) > 0.4
    mask[2] = False  # an empty sequence
    weights = position_weights(reduction, mask, count)
    assert bool((weights[~mask] == 0).all())
    expected = reduce(values, mask, reduction, count)
    assert torch.allclose((weights * values).sum(), expected, rtol=1e-12, atol=1e-12)
    assert get_reduction(get_reduction(reduction)) is get_reduction(reduction)


def test_get_reduction_refuses_unknown_reductions():
    from divreg.reductions import get_reduction

    with pytest.raises(ValueError, match="reduction must be one of"):
        get_reduction("median")
    with pytest.raises(ValueError, match="divreg.reductions"):
        get_reduction(torch.mean)


def test_per_sequence_mean_with_the_global_sequence_count_is_split_invariant():
    """Micro-batches of sequences, each divided by the global number of non-empty sequences,
    sum to the per-sequence mean of the whole batch (as sum_over_items does for tokens)."""
    generator = torch.Generator().manual_seed(9)
    values = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    mask = torch.rand(7, 5, generator=generator) > 0.5
    mask[3] = False  # an empty sequence: not counted
    sequences = int(mask.any(1).sum())
    whole = per_sequence_mean(values, mask)
    for split in ([7], [3, 4], [1, 2, 2, 2]):
        parts, start = [], 0
        for size in split:
            parts.append(per_sequence_mean(values[start:start + size], mask[start:start + size], sequences))
            start += size
        assert abs(float(sum(parts)) - float(whole)) < 1e-12
