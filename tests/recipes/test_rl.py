"""The rl command end to end on seconds-long settings: outputs and logged KL metrics, KL
placements and estimators, no reference when the coefficient is 0, exact resume after SIGKILL,
and clear errors before any training."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from divreg.config import load_config
from divreg.recipes.rl import RLConfig, run

TINY = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=20", "warmup_batch_size=16", "steps=4",
        "prompts_per_step=4", "group_size=4", "max_new_tokens=3", "eval_every=2", "checkpoint_every=2", "seeds=[0]",
        "policy.config.hidden_size=16", "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=1"]


def _config(output_dir, *extra):
    return load_config(RLConfig, None, [*TINY, f"output_dir={output_dir}", *extra])


def test_run_writes_the_table_metrics_and_curves(tmp_path, capsys):
    summary = run(_config(tmp_path / "a"))
    assert set(summary) == {"seeds", "warmup_accuracy", "rl_accuracy"}
    assert 0 <= summary["rl_accuracy"]["mean"] <= 1 and summary["seeds"]["0"]["warmup_accuracy"] >= 0
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["run"] for r in records] == ["warmup-seed0", "grpo-seed0", "grpo-seed0"]
    grpo = records[-1]
    for key in ("reward", "test_accuracy", "kl_estimate", "kl_exact", "kl_gap", "k1_negative_fraction", "entropy",
                "kl_coef", "policy_loss", "kl_term", "completion_tokens"):
        assert key in grpo and grpo[key] == grpo[key], key  # present and not NaN
    assert grpo["kl_gap"] == pytest.approx(grpo["kl_estimate"] - grpo["kl_exact"])
    assert grpo["kl_exact"] >= 0 and 0 <= grpo["k1_negative_fraction"] <= 1 and grpo["kl_coef"] == 0.04
    assert (tmp_path / "a" / "curves.png").stat().st_size > 5000
    assert "mean +- std" in capsys.readouterr().out


@pytest.mark.parametrize("options", [
    ["kl_placement=reward", "kl_estimator=k1"],
    ["kl_estimator=exact", "kl_direction=forward", "loss_agg=seq_mean_token_sum_norm", "num_iterations=2",
     "importance_sampling=sequence", "epsilon_high=0.28", "grad_accum=2"],
    ["kl_estimator=k3_k2grad", "kl_target=0.01", "kl_horizon=100", "advantage_scale=none"],
])
def test_kl_options_run(tmp_path, options):
    run(_config(tmp_path / "run", *options, "warmup_steps=0"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl_exact"] >= 0 for r in records)
    if "kl_target=0.01" in options:  # the adaptive controller moved the coefficient
        assert records[-1]["kl_coef"] != 0.04


def test_no_kl_means_no_reference(tmp_path):
    run(_config(tmp_path / "run", "kl_coef=0", "warmup_steps=0"))
    record = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert "kl_exact" not in record and "entropy" in record and record["kl_coef"] == 0


@pytest.mark.parametrize("options,message", [
    (["kl_estimator=k1"], "k1 as a loss has zero gradient"),
    (["kl_direction=forward", "kl_estimator=k2"], "kl_direction='forward' is available as"),
    (["rewards={exact_match: 1.0, length: 1.0}"], "rewards must map some of"),
    (["prompts_per_step=7", "group_size=3", "grad_accum=2"], "must split into grad_accum=2"),
    (["group_size=1"], "group_size=1 has no group standard deviation"),
])
def test_bad_options_stop_before_training(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        run(_config(tmp_path / "run", *options))
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_a_policy_with_another_tokenizer_is_refused(tmp_path):
    from divreg.data import train_bpe_tokenizer
    from divreg.models import CausalLM, ModelSource, build_causal_lm

    other = train_bpe_tokenizer(["1+2=3", "4*5=20"] * 20, 300)
    policy = CausalLM(build_causal_lm(ModelSource(config={"model_type": "llama", "hidden_size": 16,
                                                           "num_hidden_layers": 1, "num_attention_heads": 2,
                                                           "intermediate_size": 32}), other, 0))
    policy.model.save_pretrained(tmp_path / "policy")
    other.save_pretrained(tmp_path / "policy")
    with pytest.raises(ValueError, match="ships its own tokenizer, which differs"):
        run(_config(tmp_path / "run", f"policy.path={tmp_path / 'policy'}"))


def _launch(arguments):
    return subprocess.Popen([sys.executable, "-m", "divreg.cli", "rl", *TINY, *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_gives_bitwise_identical_weights(tmp_path):
    arguments = ["steps=12", "checkpoint_every=3", "eval_every=6", "warmup_steps=6", "num_iterations=2"]
    reference = _launch([f"output_dir={tmp_path / 'reference'}", *arguments])
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    killed = tmp_path / "killed"
    victim = _launch([f"output_dir={killed}", *arguments])
    target = killed / "checkpoints" / "grpo-seed0.pt"
    deadline, state = time.time() + 120, None
    while time.time() < deadline and victim.poll() is None:
        if target.exists():
            state = torch.load(target, weights_only=False)["state"]
            if not state["done"]:
                break  # a mid-run checkpoint of the GRPO run: kill now
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert state is not None and not state["done"] and 0 < state["step"] < 12
    resumed = _launch([f"output_dir={killed}", *arguments, "resume=true"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    for name in ("warmup-seed0.pt", "grpo-seed0.pt"):
        expected = torch.load(tmp_path / "reference" / "checkpoints" / name, weights_only=False)
        got = torch.load(killed / "checkpoints" / name, weights_only=False)
        for key, tensor in expected["model"].items():
            assert torch.equal(tensor, got["model"][key]), (name, key)
        assert expected["components"] == got["components"]  # the KL coefficient's state
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text()) == json.loads(
        (killed / "metrics.json").read_text())
