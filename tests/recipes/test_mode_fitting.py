"""The mode-fitting demo shows what it claims: forward KL covers both modes, reverse KL
collapses onto one."""

import json
import os

import pytest
import torch

from divreg import divergences as D
from divreg.recipes.analytics.mode_fitting import ModeFittingConfig, fit, run, summarize, target_logits

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)


def test_forward_kl_covers_both_modes_and_reverse_kl_collapses():
    config = ModeFittingConfig()
    forward = summarize(fit(config, D.forward_kl), config)
    reverse = summarize(fit(config, D.reverse_kl), config)
    assert min(forward["left mass"], forward["right mass"]) > 0.4  # covers both
    assert max(reverse["left mass"], reverse["right mass"]) > 0.99  # one mode only
    assert reverse["entropy"] < forward["entropy"] - 1.0
    # each objective wins on its own criterion
    assert forward["forward KL"] < reverse["forward KL"] and reverse["reverse KL"] < forward["reverse KL"]


def test_forward_kl_optimum_matches_moments_in_the_exponential_family():
    """Minimizing KL(p || q) over discretized Gaussians q matches p's mean and variance."""
    config = ModeFittingConfig(steps=3000, lr=0.05)
    fitted = torch.softmax(fit(config, D.forward_kl), -1)
    target = torch.softmax(target_logits(config), -1)
    x = torch.linspace(-config.support_limit, config.support_limit, config.bins, dtype=torch.float64)
    for moment in (1, 2):
        assert abs(float((fitted * x**moment).sum() - (target * x**moment).sum())) < 1e-4


def test_run_writes_plot_and_results(tmp_path, capsys):
    config = ModeFittingConfig(steps=5, output_dir=str(tmp_path))
    results = run(config)
    assert set(results) == {"forward KL", "reverse KL", "JSD(0.5)", "TV", "skew KL(0.1)", "skew RKL(0.1)",
                            "alpha(0.5)"}
    assert os.path.getsize(tmp_path / "mode_fitting.png") > 10_000
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert "| minimized" in capsys.readouterr().out


@pytest.mark.parametrize("key,value", [("bins", 2), ("mode_std", 0.0), ("left_weight", 1.0),
                                       ("student", "mlp"), ("steps", 0), ("lr", -1.0)])
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        ModeFittingConfig(**{key: value})
