"""`divreg frontier`: the built-in Bernoulli model and user JSON files, outputs and clear errors."""

import json

import pytest
import torch

import divreg.alignment as A
from divreg.config import load_config
from divreg.recipes.analytics.frontier import FrontierConfig, run

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)


def test_builtin_bernoulli_frontier(tmp_path, capsys):
    out = run(load_config(FrontierConfig, None, [f"output_dir={tmp_path}", "bernoulli_length=6", "ns=[1,2,8]",
                                                 "betas=10"]))
    assert out["ns"] == [1, 2, 8] and out["best_of_n_kl"][0] == pytest.approx(0.0, abs=1e-15)
    for n, value in zip(out["ns"], out["best_of_n_kl"]):
        assert value <= A.best_of_n_kl_bound(n) + 1e-12
    assert all(t >= b - 1e-9 for t, b in zip(out["tilted_reward_at_best_of_n_kl"], out["best_of_n_reward"]))
    assert (tmp_path / "frontier.png").stat().st_size > 5000
    assert json.loads((tmp_path / "frontier.json").read_text())["ns"] == [1, 2, 8]
    assert "tilted reward at that KL" in capsys.readouterr().out


def test_user_json_files_and_errors(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps([0.2, 0.3, 0.5]))
    (tmp_path / "rewards.json").write_text(json.dumps([1.0, 0.0, 2.0]))
    out = run(load_config(FrontierConfig, None, [f"output_dir={tmp_path / 'o'}", f"base={tmp_path / 'base.json'}",
                                                 f"rewards={tmp_path / 'rewards.json'}", "ns=[1,3]", "betas=5"]))
    rewards = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    expected = float((A.best_of_n([0.2, 0.3, 0.5], rewards, 3) * rewards).sum())  # by hand: 2 (1 - 0.5^3) + ...
    assert expected == pytest.approx(2 * (1 - 0.5 ** 3) + 1 * (0.5 ** 3 - 0.3 ** 3))
    assert out["best_of_n_reward"][1] == pytest.approx(expected)
    (tmp_path / "short.json").write_text(json.dumps([1.0, 2.0]))
    with pytest.raises(ValueError, match="one reward per outcome"):
        run(load_config(FrontierConfig, None, [f"base={tmp_path / 'base.json'}", f"rewards={tmp_path / 'short.json'}"]))
    with pytest.raises(ValueError, match="give both base and rewards"):
        load_config(FrontierConfig, None, [f"base={tmp_path / 'base.json'}"])
    with pytest.raises(ValueError, match="does not exist"):
        run(load_config(FrontierConfig, None, ["base=missing.json", "rewards=missing.json"]))
