"""IRT difficulty fits (Rasch, 2PL) against scipy's optimizer on the same objective, recovery of
known parameters, and the curriculum weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from divreg.data import curriculum_weights, fit_irt, irt_objective


def _simulate(seed: int, solvers: int = 40, items: int = 60, two_pl: bool = False):
    rng = np.random.default_rng(seed)
    ability, difficulty = rng.normal(0, 1, solvers), rng.normal(0, 1.5, items)
    scale = np.exp(rng.normal(0, 0.3, items)) if two_pl else np.ones(items)
    p = 1 / (1 + np.exp(-scale[None] * (ability[:, None] - difficulty[None])))
    correct = (rng.random((solvers, items)) < p).astype(float)
    mask = (rng.random((solvers, items)) < 0.8).astype(float)  # a fifth unobserved
    return correct, mask, ability, difficulty


def _scipy_fit(correct, mask, two_pl: bool):
    solvers, items = correct.shape
    y, m = torch.tensor(correct), torch.tensor(mask)

    def split(x):
        x = torch.tensor(x, requires_grad=True)
        return x, x[:solvers], x[solvers:solvers + items], (x[solvers + items:] if two_pl else None)

    def value_and_grad(x):
        full, ability, difficulty, log_a = split(x)
        value = irt_objective(y, m, ability, difficulty, log_a, 3.0, 0.5)
        value.backward()
        return float(value.detach()), full.grad.numpy()

    size = solvers + items + (items if two_pl else 0)
    result = optimize.minimize(value_and_grad, np.zeros(size), jac=True, method="BFGS",
                               options={"gtol": 1e-9, "maxiter": 10_000})
    return result.x[:solvers], result.x[solvers:solvers + items], result.fun


@pytest.mark.parametrize("model", ["rasch", "2pl"])
def test_fit_equals_scipy_on_the_same_posterior(model):
    correct, mask, _, _ = _simulate(0, two_pl=model == "2pl")
    fit = fit_irt(correct, mask, model=model)
    ability, difficulty, best = _scipy_fit(correct, mask, model == "2pl")
    assert fit.objective == pytest.approx(best, rel=1e-9, abs=1e-7)
    np.testing.assert_allclose(fit.difficulty, difficulty, atol=1e-4)
    np.testing.assert_allclose(fit.ability, ability, atol=1e-4)


def test_unobserved_entries_change_nothing():
    correct, mask, _, _ = _simulate(1)
    flipped = np.where(mask == 0, 1 - correct, correct)
    a, b = fit_irt(correct, mask), fit_irt(flipped, mask)
    np.testing.assert_allclose(a.difficulty, b.difficulty, atol=1e-10)


def test_recovers_known_difficulties():
    correct, mask, ability, difficulty = _simulate(2, solvers=200, items=50)
    fit = fit_irt(correct, mask)
    assert stats.spearmanr(fit.difficulty, difficulty).statistic > 0.95
    assert stats.spearmanr(fit.ability, ability).statistic > 0.85
    assert fit.probability().shape == correct.shape


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="model must be one of"):
        fit_irt(np.ones((2, 2)), model="3pl")
    with pytest.raises(ValueError, match="0/1"):
        fit_irt(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="same shape"):
        fit_irt(np.ones((2, 2)), np.ones((2, 3)))


def test_curriculum_moves_from_easy_to_hard():
    difficulty = np.array([3.0, -1.0, 0.5, 2.0, -2.0])
    early, late = curriculum_weights(difficulty, 0.0), curriculum_weights(difficulty, 1.0)
    assert early.sum() == pytest.approx(1.0) and late.sum() == pytest.approx(1.0)
    assert early.argmax() == difficulty.argmin() and late.argmax() == difficulty.argmax()
    np.testing.assert_allclose(curriculum_weights(difficulty, 0.3, "hard_to_easy"),
                               curriculum_weights(-difficulty, 0.3))
    np.testing.assert_allclose(curriculum_weights(difficulty, 0.5, "uniform"), 0.2)
    with pytest.raises(ValueError, match="progress"):
        curriculum_weights(difficulty, 1.5)
