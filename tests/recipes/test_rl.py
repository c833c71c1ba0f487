"""The rl command end to end on seconds-long settings: outputs and logged KL metrics, KL
placements and estimators, no reference when the coefficient is 0, exact resume after SIGKILL,
and clear errors before any training."""

import json
import math
import subprocess
import sys

import pytest
import torch

from divreg.config import load_config
from divreg.recipes.rl import RLConfig, run

from ..launch import kill_at_checkpoint

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)

TINY = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=20", "warmup_batch_size=16", "steps=4",
        "prompts_per_step=4", "group_size=4", "max_new_tokens=3", "eval_every=2", "checkpoint_every=2", "seeds=[0]",
        "policy.config.hidden_size=16", "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=1"]


def _config(output_dir, *extra):
    return load_config(RLConfig, None, [*TINY, f"output_dir={output_dir}", *extra])


def test_run_writes_the_table_metrics_and_curves(tmp_path, capsys):
    summary = run(_config(tmp_path / "a"))
    assert set(summary) == {"seeds", "warmup_accuracy", "rl_accuracy", "warmup_eval_reward", "rl_eval_reward"}
    assert 0 <= summary["rl_accuracy"]["mean"] <= 1 and summary["seeds"]["0"]["warmup_accuracy"] >= 0
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["record"], r["step"]) for r in records] == [
        ("warmup-seed0", "evaluation", 20), ("grpo-seed0", "step", 1), ("grpo-seed0", "step", 2),
        ("grpo-seed0", "evaluation", 2), ("grpo-seed0", "step", 3), ("grpo-seed0", "step", 4),
        ("grpo-seed0", "evaluation", 4)]
    steps = [r for r in records if r["record"] == "step"]
    for step in steps:  # every step logs the estimate, the exact KL, their gap, negative k1, entropy
        for key in ("reward", "kl_estimate", "kl_exact", "kl_gap", "k1_negative_fraction", "entropy", "kl_coef"):
            assert key in step and step[key] == step[key], key
        assert step["kl_gap"] == pytest.approx(step["kl_estimate"] - step["kl_exact"])
    assert steps[0]["kl_exact"] == pytest.approx(0.0, abs=1e-7)  # the first step samples the reference itself
    for evaluation, pair in ((records[3], steps[:2]), (records[6], steps[2:])):  # evaluation = means since the last
        for key in ("reward", "kl_exact", "entropy"):
            assert evaluation[key] == pytest.approx(sum(s[key] for s in pair) / 2, rel=1e-12)
    grpo = records[-1]
    for key in ("reward", "test_accuracy", "kl_estimate", "kl_exact", "kl_gap", "k1_negative_fraction", "entropy",
                "kl_coef", "policy_loss", "kl_term", "completion_tokens"):
        assert key in grpo and grpo[key] == grpo[key], key  # present and not NaN
    assert grpo["kl_gap"] == pytest.approx(grpo["kl_estimate"] - grpo["kl_exact"])
    assert grpo["kl_exact"] >= 0 and 0 <= grpo["k1_negative_fraction"] <= 1 and grpo["kl_coef"] == 0.04
    assert (tmp_path / "a" / "curves.png").stat().st_size > 5000
    assert "mean +- std" in capsys.readouterr().out


@pytest.mark.parametrize("options", [
    ["kl_placement=reward", "kl_estimator=k1", "loss_agg=seq_mean_token_sum_norm"],
    ["kl_estimator=exact", "kl_direction=forward", "num_iterations=2", "importance_sampling=sequence",
     "epsilon_high=0.28", "grad_accum=2"],
    ["kl_estimator=k3_k2grad", "kl_target=0.01", "kl_horizon=100", "advantage_scale=none"],
])
def test_kl_options_run(tmp_path, options):
    run(_config(tmp_path / "run", *options, "warmup_steps=0"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl_exact"] >= 0 for r in records)
    if "kl_placement=reward" in options:  # the KL is in the reward, not in the loss
        assert all(r["kl_term"] == 0 for r in records)
    else:  # the KL term is in the loss (the policy moved away from the reference after the first step)
        assert all(r["kl_term"] > 0 for r in records[1:])
    if "kl_target=0.01" in options:  # the adaptive controller moved the coefficient
        assert records[-1]["kl_coef"] != 0.04


def test_logged_reward_is_the_task_reward_before_the_kl_penalty(tmp_path):
    """With the KL in the reward and a huge coefficient, the penalized rewards are far outside
    [0, 1.1]; the logged reward is the task's (exact match + 0.1 format)."""
    run(_config(tmp_path / "run", "kl_placement=reward", "kl_estimator=k1", "kl_coef=100", "warmup_steps=0"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["reward"] <= 1.1 for r in records)


def test_fused_and_dense_signals_agree_and_the_fused_run_trains(tmp_path):
    """fused=true (per-token log-probs and the exact KL through divreg.fused, as at >= 32768
    tokens) against the dense path: the same log-probs, entropies and exact KLs (both
    directions, two temperatures) on a policy and a different reference; then a run with the
    exact KL in the loss on the fused path trains."""
    from divreg.data import arithmetic_problems, char_tokenizer, collate, task_records, tokenize_records
    from divreg.models import CausalLM, ModelSource, build_causal_lm, next_token_signal
    from divreg.targets import sampled_token_logprobs, signal_divergence

    tokenizer = char_tokenizer()
    config = _config(tmp_path / "unused")
    policy, reference = (CausalLM(build_causal_lm(ModelSource(config=dict(config.policy.config)), tokenizer, seed),
                                  len(tokenizer)).eval() for seed in (0, 1))
    train, _ = arithmetic_problems(6, 0, digits=2, seed=0)
    batch = collate(tokenize_records(task_records(train), tokenizer, 16, 1), tokenizer.pad_token_id)
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    with torch.no_grad():
        for temperature in (1.0, 0.7):
            signals = {hidden: (next_token_signal(policy, batch, hidden), next_token_signal(reference, batch, hidden))
                       for hidden in (False, True)}
            dense, fused = (sampled_token_logprobs(signals[h][0], targets, temperature=temperature) for h in (False, True))
            torch.testing.assert_close(fused.logprobs, dense.logprobs, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fused.entropy, dense.entropy, rtol=1e-5, atol=1e-6)
            for divergence in ("reverse_kl", "forward_kl"):
                expected, got = (signal_divergence(*signals[h], mask, divergence=divergence, temperature=temperature)
                                 for h in (False, True))
                assert float(expected.abs().max()) > 1e-3  # different models: a real KL
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    run(_config(tmp_path / "run", "fused=true", "kl_estimator=exact", "warmup_steps=0", "steps=3", "eval_every=1"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the loss's KL term (the fused kernel's reduction) is the logged exact KL: the same token mean
    assert records[-1]["kl_term"] > 0 and records[-1]["kl_term"] == pytest.approx(records[-1]["kl_exact"], rel=1e-4)


@pytest.mark.parametrize("name,extra", [
    ("apo.yaml", []),
    ("lp-reg.yaml", ["lp_reg_rho=0.2"]),  # 2-3 tokens per tiny completion: rho 0.01 would select none
    ("ctrl.yaml", ["ctrl_samples=3"]),
    ("rapo.yaml", []),
    ("rapo.yaml", ["kl_estimator=k3", "grad_accum=2"]),
    ("kdrl.yaml", ["reference.config.hidden_size=16", "reference.config.intermediate_size=32",
                   "reference.config.num_hidden_layers=1", "reference_warmup_steps=10", "kl_mask_correct=true"]),
])
def test_the_papers_configs_run_two_steps(tmp_path, name, extra):
    """Each method of issue 13 shipped as a config runs (two GRPO steps) and logs its own terms."""
    config = load_config(RLConfig, f"configs/rl/{name}", [*TINY, "steps=2", "eval_every=1", "warmup_steps=10",
                                                          f"output_dir={tmp_path / 'run'}", *extra])
    summary = run(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("record") == "step"]
    assert len(steps) == 2 and all(r["loss"] == r["loss"] for r in steps)
    if name == "apo.yaml":
        assert all(0 < r["kl_weight"] <= 1 for r in steps)
    if name == "lp-reg.yaml":
        assert "lp_reg_tokens" in steps[0] and "kl_exact" not in steps[0]  # no reference at all
    if name == "ctrl.yaml":  # the logged reward is the task's, before the calibration (exp(4 C) is in [1, e^4])
        assert all(0 <= r["reward"] <= 1.1 for r in steps) and "kl_exact" in steps[0]
        assert all(1 <= r["ctrl_reward"] <= math.exp(4) for r in steps)  # exp(t C), C in [0, 1]
    if name == "rapo.yaml":  # the forward KL to the reweighted reference is in the loss; the entropy bonus too
        assert all(r["kl_term"] > 0 for r in steps[1:]) and all(r["entropy_term"] > 0 for r in steps)
    if name == "kdrl.yaml":
        assert [r["run"] for r in records][:2] == ["warmup-seed0", "reference-warmup-seed0"]
        assert steps[0]["kl_coef"] == 0.005 and steps[1]["kl_coef"] == pytest.approx(0.005 - 0.00005)
        assert "reference_accuracy" in summary["seeds"]["0"] and steps[0]["kl_exact"] > 0  # another model


@pytest.mark.parametrize("options,message", [
    (["kl_estimator=k1"], "k1 as a loss has zero gradient"),
    (["kl_direction=forward", "kl_estimator=k2"], "kl_direction='forward' is available as"),
    (["rewards={exact_match: 1.0, length: 1.0}"], r"rewards: \[.length.\] is neither a built-in"),
    (["rewards={nosuchmodule.reward: 1.0}"], "reward .nosuchmodule.reward. does not import"),
    (["held_out=prompts.jsonl"], "held_out names held-out prompts for your own data"),
    (["prompts_per_step=7", "group_size=3", "grad_accum=2"], "must split into grad_accum=2"),
    (["group_size=1"], "group_size=1 has no group standard deviation"),
    (["kl_coef=0", "kl_target=0.1"], "kl_target needs kl_coef > 0"),
    (["digits=3", "max_new_tokens=4"], "cannot hold the longest answer"),
    (["reference.config.hidden_size=16"], "reference built from reference.config is untrained"),
    (["dads=true", "kl_coef=0"], "dads and kl_mask_correct weight the KL term"),
    (["lp_reg=true", "fused=true"], "lp_reg needs the sampling policy's full logits"),
    (["kl_coef_decay=0.001", "kl_target=0.1"], "choose one"),
    (["ctrl=best_of_2"], "ctrl must be 'none' or one of"),
    (["rapo=true"], "rapo is a forward KL in the loss"),
    (["rapo=true", "kl_direction=forward", "kl_estimator=exact", "kl_target=0.1"], "rapo needs a fixed"),
    (["reference.path=/nonexistent", "kl_coef=0"], "reference is the KL's target"),
    (["rapo=true", "kl_direction=forward", "fused=true"], "rapo reweights"),
    (["ctrl=best_of_n", "ctrl_t=0"], "ctrl needs ctrl_t > 0"),
])
def test_bad_options_stop_before_training(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        run(_config(tmp_path / "run", *options))
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_correctness_based_shaping_needs_the_exact_match_reward():
    with pytest.raises(ValueError, match="keep it in rewards"):
        RLConfig(stcr=True, rewards={"format": 1.0})


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
        run(_config(tmp_path / "run", f"policy.path={tmp_path / 'policy'}", "tokenizer=builtin"))
    # without tokenizer=, the run reads the policy's own tokenizer (the printed config says so)
    assert _config(tmp_path / "run", f"policy.path={tmp_path / 'policy'}").tokenizer == str(tmp_path / "policy")


def _launch(arguments):
    return subprocess.Popen([sys.executable, "-m", "divreg.cli", "rl", *TINY, *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("engine", [[], ["lora={r: 4}", "kl_estimator=exact"]], ids=["full", "lora"])
def test_resume_after_sigkill_gives_bitwise_identical_weights(tmp_path, engine):
    arguments = ["steps=12", "checkpoint_every=3", "eval_every=6", "warmup_steps=6", "num_iterations=2", *engine]
    reference = _launch([f"output_dir={tmp_path / 'reference'}", *arguments])
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    killed = tmp_path / "killed"
    victim = _launch([f"output_dir={killed}", *arguments])
    state = kill_at_checkpoint(victim, killed / "checkpoints" / "grpo-seed0.pt",
                               lambda c: not c["state"]["done"])["state"]  # a mid-run checkpoint of the GRPO run
    assert 0 < state["step"] < 12
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
    # the log too: the records written after the checkpoint and before the kill are not repeated
    expected, got = ((folder / "metrics.jsonl").read_text().splitlines() for folder in (tmp_path / "reference", killed))
    assert len(expected) == 1 + 12 + 2 and got == expected


@pytest.mark.alone  # two processes or a Ray cluster: make test runs it after the parallel tier
def test_two_processes_run_the_command(tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo): each generates its half of the prompts
    (seeded by its rank), the group advantages come from the gathered global batch, and the run
    writes one table. (The loss's gradient for 2 processes x 4 = 1 x 8 is tested with every loss
    aggregation in tests/recipes/test_lm_losses.py; the completions themselves differ by design.)"""
    from ..launch import accelerate_prefix

    command = [*accelerate_prefix(2), "-m", "divreg.cli", "rl", *TINY, f"output_dir={tmp_path / 'two'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and result.stdout.count("mean +- std") == 1
    summary = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert 0 <= summary["rl_accuracy"]["mean"] <= 1
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["run"] for r in records if r["record"] == "evaluation"] == ["warmup-seed0", "grpo-seed0", "grpo-seed0"]
    assert [r["step"] for r in records if r["record"] == "step"] == [1, 2, 3, 4]  # written once


@pytest.mark.parametrize("options", [["fused=false"], ["fused=true"], ["fused=true", "kl_estimator=exact"]])
def test_the_one_forward_step_logs_and_trains_as_the_separate_scoring_pass(tmp_path, monkeypatch, options):
    """By default a step runs the policy once (the loss's forward) and computes the reference's
    log-probs and the logged statistics in the loss's micro-batches (on hidden states: the
    policy's log-probs and entropy, the exact KL, in the loss with kl_estimator=exact, and the
    reference's log-probs out of one chunked pass); the same run with the separate no-gradient
    scoring pass (what num_iterations > 1, the KL in the reward, RAPO and Lp-Reg need) gives the
    same losses, entropy, exact KL and estimate at every step."""
    from divreg.recipes.rl.trainer import RLTrainer

    run(_config(tmp_path / "lean", "warmup_steps=0", "grad_accum=2", *options))
    original = RLTrainer.__init__

    def separate_pass(self, *args, **kwargs):
        original(self, *args, **kwargs)
        assert self.lean  # the default configuration takes the one-forward step
        self.lean = False

    monkeypatch.setattr(RLTrainer, "__init__", separate_pass)
    run(_config(tmp_path / "full", "warmup_steps=0", "grad_accum=2", *options))
    lean, full = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["record"] == "step"] for name in ("lean", "full"))
    assert len(lean) == len(full) == 4
    for mine, theirs in zip(lean, full):
        for key in ("loss", "policy_loss", "kl_term", "entropy", "kl_exact", "kl_estimate", "k1_negative_fraction"):
            # on hidden states the logged exact KL (about 1e-5 here) comes from two fp32 algorithms (the one pass's
            # logit gaps, the separate kernel's log-ratios): each is within a few 1e-7 of the fp64 value
            # (and so are the estimate and the KL term of the loss with kl_estimator=exact)
            tolerance = 2e-7 if key in ("kl_exact", "kl_term", "kl_estimate") and "fused=true" in options else 1e-9
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=tolerance), (mine["step"], key)


def test_curriculum_draws_easy_prompts_first_and_refuses_missing_difficulties(tmp_path):
    """curriculum=easy_to_hard: each step's prompts are a seeded draw weighted toward the easy
    end early and the hard end late (the same draw again for the same seed and step: resume); a
    prompt without a numeric difficulty stops the run before training, naming it."""
    import types

    import numpy as np

    from divreg.recipes.rl.trainer import RLTrainer, prompt_difficulties

    records = [{"prompt": f"{i}+1=", "answer": str(i + 1), "difficulty": i % 5} for i in range(100)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    config = load_config(RLConfig, None, [f"data={data}", "curriculum=easy_to_hard", "steps=10",
                                          "prompts_per_step=8", "rewards={exact_match: 1.0}"])
    train = [types.SimpleNamespace(columns=r, where=f"line {i + 1}", prompt=r["prompt"]) for i, r in enumerate(records)]
    difficulty = prompt_difficulties(train, config)
    trainer = types.SimpleNamespace(config=config, difficulty=difficulty, train=train)
    first, last = RLTrainer.step_prompts(trainer, 0, 0), RLTrainer.step_prompts(trainer, 0, 9)
    assert len(set(first.tolist())) == 8
    assert difficulty[first.numpy()].mean() < 1.0 < 3.0 < difficulty[last.numpy()].mean()
    assert torch.equal(RLTrainer.step_prompts(trainer, 0, 0), first)
    uniform = types.SimpleNamespace(config=config, difficulty=None, train=train)
    assert 1.0 < np.mean(difficulty[RLTrainer.step_prompts(uniform, 0, 0).numpy()]) < 3.5
    records[50].pop("difficulty")  # a training prompt (the first tenth is held out)
    data.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(ValueError, match="needs a number in the column 'difficulty'"):
        run(load_config(RLConfig, None, [*TINY, "warmup_steps=0", f"data={data}", "curriculum=easy_to_hard", "tokenizer=builtin",
                                         "rewards={exact_match: 1.0}", f"output_dir={tmp_path / 'out'}"]))
    with pytest.raises(ValueError, match="curriculum must be one of"):
        load_config(RLConfig, None, ["curriculum=hard"])
