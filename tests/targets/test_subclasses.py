"""LELP's pseudo-subclass targets: the class marginals are the teacher's, the null-space
projection removes the output weights' row space, the subclass split follows the projections."""

from __future__ import annotations

import pytest
import torch

from divreg.targets import class_log_probs, fit_subclass_projection


def _teacher(seed: int = 0, n: int = 200, d: int = 12, classes: int = 2):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, d, generator=generator, dtype=torch.float64)
    weight = torch.randn(classes, d, generator=generator, dtype=torch.float64)
    logits = embeddings @ weight.T
    return embeddings, weight, logits, logits.argmax(-1)


def test_class_marginals_are_the_teachers_and_rows_sum_to_one():
    embeddings, weight, logits, labels = _teacher()
    projection = fit_subclass_projection(embeddings, labels, weight, subclasses=4)
    targets = projection.targets(embeddings, logits, beta=0.5, temperature=2.0)  # (N, C*S)
    assert targets.shape == (200, 8)
    torch.testing.assert_close(targets.sum(-1), torch.ones(200, dtype=torch.float64))
    torch.testing.assert_close(targets.unflatten(-1, (2, 4)).sum(-1), torch.softmax(logits / 2.0, -1))
    torch.testing.assert_close(class_log_probs(targets.log(), 2).exp(), torch.softmax(logits / 2.0, -1))


def test_null_space_projection_ignores_the_output_weights_row_space():
    embeddings, weight, logits, labels = _teacher(1)
    projection = fit_subclass_projection(embeddings, labels, weight, subclasses=3)
    torch.testing.assert_close(weight @ projection.null_space, torch.zeros_like(weight), atol=1e-10, rtol=0)
    shifted = embeddings + torch.randn(200, 2, dtype=torch.float64) @ weight  # moves along the row space only
    torch.testing.assert_close(projection.scores(shifted), projection.scores(embeddings), atol=1e-9, rtol=0)


def test_subclass_split_follows_the_principal_direction():
    """One class whose projected embeddings vary along one direction: with S = 1 direction and
    no rotation, the scores are the standardized coordinate along it (up to sign)."""
    generator = torch.Generator().manual_seed(2)
    n, d = 300, 5
    coordinate = torch.randn(n, generator=generator, dtype=torch.float64)
    direction = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    embeddings = coordinate[:, None] * direction + 0.01 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    weight = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]], dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    labels[:2] = 1
    projection = fit_subclass_projection(embeddings, labels, weight, subclasses=1, rotate=False)
    scores = projection.scores(embeddings)[:, 0, 0]
    expected = (coordinate - coordinate[labels == 0].mean()) / coordinate[labels == 0].std()
    assert abs(torch.corrcoef(torch.stack([scores, expected]))[0, 1]) > 0.999


def test_bad_input_is_a_clear_error():
    embeddings, weight, logits, labels = _teacher()
    with pytest.raises(ValueError, match="subclasses"):
        fit_subclass_projection(embeddings, labels, weight, subclasses=0)
    with pytest.raises(ValueError, match="class 1 has"):
        fit_subclass_projection(embeddings, torch.zeros(200, dtype=torch.long).index_fill(0, torch.tensor([0]), 1),
                                weight)
    with pytest.raises(ValueError, match="multiple"):
        class_log_probs(torch.zeros(3, 7), 2)
