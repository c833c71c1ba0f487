"""The preference command end to end on seconds-long settings: outputs and per-step metrics, the
loss options, user pair files with a saved model, precomputed = live reference, 2 processes, exact
resume after SIGKILL, and clear errors before training."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch

from divreg.config import load_config
from divreg.recipes.preference import PreferenceConfig, run

from ..launch import accelerate_prefix, kill_at_checkpoint

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)

TINY = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=20", "warmup_batch_size=16", "warmup_target=null",
        "steps=4", "batch_size=8", "max_new_tokens=3", "eval_every=2", "checkpoint_every=2", "seeds=[0]",
        "kl_prompts=4", "policy.config.hidden_size=16", "policy.config.intermediate_size=32",
        "policy.config.num_hidden_layers=1"]


def _config(output_dir, *extra):
    return load_config(PreferenceConfig, None, [*TINY, f"output_dir={output_dir}", *extra])


def _weights(folder, name):
    return torch.load(folder / "checkpoints" / name, weights_only=False)["model"]


def test_run_writes_the_table_metrics_pairs_and_curves(tmp_path, capsys):
    summary = run(_config(tmp_path / "a"))
    for method in ("dpo", "hypo"):
        for key in ("test_accuracy", "held_out_reward_accuracy", "kl"):
            assert 0 <= summary[method][key]["mean"] < float("inf"), (method, key)
    assert summary["warmup"]["kl"]["mean"] == pytest.approx(0.0, abs=1e-12)  # the reference itself
    assert summary["warmup"]["held_out_reward_accuracy"]["mean"] == 0.0  # every implicit reward is 0: all ties
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["record"], r["step"]) for r in records] == [
        ("warmup-seed0", "evaluation", 20),
        *[(f"{m}-seed0", kind, step) for m in ("dpo", "hypo")
          for kind, step in (("step", 1), ("step", 2), ("evaluation", 2), ("step", 3), ("step", 4), ("evaluation", 4))]]
    for record in records[1:]:
        keys = {"loss", "loss_sigmoid", "reward_accuracy", "margin", "chosen_logratio", "rejected_logratio"}
        if record["run"].startswith("hypo"):
            keys |= {"loss_hypo_kl", "hypo_kl_estimate"}
        if record["record"] == "evaluation":
            keys |= {"test_accuracy", "held_out_reward_accuracy", "held_out_margin", "kl"}
        assert keys <= set(record) and all(record[k] == record[k] for k in keys), (record["run"], keys - set(record))
        assert 0 <= record["reward_accuracy"] <= 1
    first = records[1]  # DPO's first step: the policy is the reference, every log-ratio and margin is 0
    assert first["chosen_logratio"] == pytest.approx(0, abs=1e-6) and first["margin"] == pytest.approx(0, abs=1e-7)
    assert first["loss"] == pytest.approx(torch.nn.functional.softplus(torch.tensor(0.0)).item(), abs=1e-6)
    hypo_first = records[7]
    assert hypo_first["hypo_kl_estimate"] == pytest.approx(0, abs=1e-5)  # sampled from the reference itself
    pairs = [json.loads(line) for line in (tmp_path / "a" / "pairs-seed0.jsonl").read_text().splitlines()]
    assert len(pairs) == 60 + 20 and all(p["chosen"] != p["rejected"] for p in pairs)
    assert all(str(eval(p["prompt"][:-1])) == p["chosen"] for p in pairs)  # chosen = the right answer
    assert (tmp_path / "a" / "curves.png").stat().st_size > 5000
    assert "held-out reward accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("options", [
    ["losses={sigmoid: 0.8, hinge: 0.2}", "sft_weight=1.0", "divergence=js", "grad_accum=2", "kl_eval=sampled",
     "kl_samples=4", "methods=[hypo]"],
    ["losses={ipo: 1.0}", "divergence=alpha", "alpha=0.3", "precompute_reference=false", "methods=[dpo]"],
    ["losses={sigmoid_norm: 1.0}", "reference=none", "kl_eval=none", "methods=[dpo]", "fused=true"],
    ["losses={robust: 1.0}", "label_smoothing=0.1", "methods=[dpo]", "kl_eval=exact"],
])
def test_loss_options_run(tmp_path, options):
    summary = run(_config(tmp_path / "run", *options))
    method = load_config(PreferenceConfig, None, [*TINY, *options]).methods[0]
    assert 0 <= summary[method]["held_out_reward_accuracy"]["mean"] <= 1
    assert ("kl" in summary[method]) == ("kl_eval=none" not in options)


def test_precomputed_reference_gives_the_live_reference_run(tmp_path):
    """The reference's log-probs computed once before training give the run that computes them live
    each step (to float rounding: the batches differ)."""
    run(_config(tmp_path / "pre", "methods=[dpo]"))
    run(_config(tmp_path / "live", "methods=[dpo]", "precompute_reference=false"))
    assert (tmp_path / "pre" / "checkpoints" / "reference-logprobs-seed0.pt").exists()
    pre, live = _weights(tmp_path / "pre", "dpo-seed0.pt"), _weights(tmp_path / "live", "dpo-seed0.pt")
    for key in pre:
        torch.testing.assert_close(pre[key], live[key], rtol=1e-4, atol=1e-6, msg=key)


def _launch(arguments, processes=1):
    prefix = accelerate_prefix(processes) if processes > 1 else [sys.executable]
    return subprocess.Popen([*prefix, "-m", "divreg.cli", "preference", *TINY, *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.alone  # two processes or a Ray cluster: make test runs it after the parallel tier
def test_two_processes_run_the_command(tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo): each takes its half of every batch of
    pairs (and samples its own completions for HyPO), the run writes one table and each record
    once. (The gradient of 1 x 8 pairs = 4 x 2 = 2 processes x 4, with precomputed and live
    references, SFT and HyPO, is tested in tests/recipes/test_lm_losses.py; Adam's first steps
    turn float rounding into visible weight differences, so weights are not compared here.)"""
    process = _launch([f"output_dir={tmp_path / 'two'}", "sft_weight=0.5"], processes=2)
    try:
        out, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers: no process outlives the test
        raise
    assert process.returncode == 0, err[-3000:]
    assert "2 process(es)" in out and out.count("held-out reward accuracy") == 1
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["run"] for r in records if r["record"] == "evaluation"] == [
        "warmup-seed0", "dpo-seed0", "dpo-seed0", "hypo-seed0", "hypo-seed0"]
    assert [r["step"] for r in records if r["record"] == "step"] == [1, 2, 3, 4] * 2


def test_resume_after_sigkill_gives_bitwise_identical_weights(tmp_path):
    arguments = ["steps=12", "checkpoint_every=3", "eval_every=6", "warmup_steps=6", "methods=[hypo]"]
    reference = _launch([f"output_dir={tmp_path / 'reference'}", *arguments])
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    killed = tmp_path / "killed"
    victim = _launch([f"output_dir={killed}", *arguments])
    state = kill_at_checkpoint(victim, killed / "checkpoints" / "hypo-seed0.pt",
                               lambda c: not c["state"]["done"])["state"]
    assert 0 < state["step"] < 12
    resumed = _launch([f"output_dir={killed}", *arguments, "resume=true"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    for name in ("warmup-seed0.pt", "hypo-seed0.pt"):
        expected, got = _weights(tmp_path / "reference", name), _weights(killed, name)
        for key, tensor in expected.items():
            assert torch.equal(tensor, got[key]), (name, key)
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text()) == json.loads(
        (killed / "metrics.json").read_text())
    expected, got = ((folder / "metrics.jsonl").read_text().splitlines() for folder in (tmp_path / "reference", killed))
    assert len(expected) == 1 + 12 + 2 and got == expected


def test_user_pairs_file_with_a_saved_model_and_tokenizer(tmp_path):
    """A pairs JSONL, the policy and tokenizer from folders (as any local model or hub id)."""
    from divreg.data import char_tokenizer
    from divreg.models import ModelSource, build_causal_lm

    tokenizer = char_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    model = build_causal_lm(ModelSource(config={"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1,
                                                "num_attention_heads": 2, "num_key_value_heads": 2,
                                                "intermediate_size": 32, "max_position_embeddings": 32}), tokenizer, 0)
    model.save_pretrained(tmp_path / "model")
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)})
                              for a in range(5) for b in range(4)))
    summary = run(_config(tmp_path / "run", f"data={path}", f"policy.path={tmp_path / 'model'}",
                          f"tokenizer={tmp_path / 'tokenizer'}", "methods=[dpo]", "kl_eval=sampled", "kl_samples=2"))
    assert "test_accuracy" not in summary["dpo"] and 0 <= summary["dpo"]["held_out_reward_accuracy"]["mean"] <= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "held_out_chosen_logprob" in records[0]  # the warm-up's held-out measure without task answers


def test_user_data_checks_and_a_changed_data_file_on_resume(tmp_path):
    """max_new_tokens must cover the longest answer when HyPO or the KL samples completions; the
    warm-up batch must fit the data; a resume refuses pairs that changed since the reference's
    log-probs were saved."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b) * 3, "rejected": str(a + b + 1)} for a in range(5)
            for b in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    common = [f"data={path}", "warmup_target=null", "methods=[dpo]", "warmup_batch_size=8"]
    with pytest.raises(ValueError, match="shorter than the longest chosen answer"):
        run(_config(tmp_path / "a", *common, "max_new_tokens=3", "kl_eval=sampled"))
    with pytest.raises(ValueError, match="warmup_batch_size=24 exceeds the 18 warm-up examples"):
        run(_config(tmp_path / "b", *common[:3], "warmup_batch_size=24", "max_new_tokens=7", "kl_eval=none"))
    arguments = [*common, "max_new_tokens=7", "kl_eval=none"]
    run(_config(tmp_path / "c", *arguments))
    rows[5]["rejected"] = "99"  # the same number of pairs, one changed
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match="the pairs differ from those whose reference log-probs are saved"):
        run(_config(tmp_path / "c", *arguments, "resume=true"))


@pytest.mark.parametrize("options,message", [
    (["losses={hinge: 1.0}", "label_smoothing=0.1"], "label_smoothing has no meaning"),
    (["kl_eval=exact", "max_new_tokens=7"], "kl_eval=exact would enumerate 15"),
    (["methods=[ppo]"], "methods must be a non-empty list of"),
    (["methods=[hypo]", "hypo_samples=1"], "hypo_samples >= 2"),
    (["methods=[hypo]", "reference=none", "kl_eval=none"], "hypo regularizes KL"),
    (["reference=none", "methods=[dpo]"], "set kl_eval=none"),
    (["losses={dpo: 1.0}"], "losses must name some of"),
    (["beta=0"], "beta must be"),
    (["batch_size=7", "grad_accum=2"], "must split evenly"),
    (["batch_size=100"], "exceeds the 60 training pairs"),
    (["max_new_tokens=2"], "cannot hold the longest answer"),
    (["data=missing.jsonl", "warmup_target=null"], "does not exist"),
    (["data=x.jsonl", "warmup_target=0.3"], "only the built-in task has"),
])
def test_bad_options_stop_before_training(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        run(_config(tmp_path / "bad", *options))


CONFIGS = pathlib.Path(__file__).parents[2] / "configs" / "preference"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_runs_two_steps(tmp_path, name):
    path = CONFIGS / name
    config = load_config(PreferenceConfig, str(path), [*TINY, "steps=2", "seeds=[0]", f"output_dir={tmp_path / 'r'}"])
    summary = run(config)
    assert set(config.methods) <= set(summary)


def test_precomputed_reference_is_never_run_again(tmp_path, monkeypatch):
    """With precomputed log-probs, DPO and no KL evaluation, the reference runs once over the
    pairs and never in training (its forward raises from then on; the model that scored the
    tables is the warm-up model itself, evaluated once before training: no second copy), and
    training gets no reference model."""
    from divreg.recipes.preference.trainer import PreferenceTrainer

    original, optimize = PreferenceTrainer.reference_logprobs, PreferenceTrainer.optimize
    calls, scorers = [], []

    def once(self, reference, pairs, path):
        table = original(self, reference, pairs, path)
        calls.append(sorted(pairs))
        scorers.append(reference)
        return table

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran after its log-probs were precomputed")

    def training(self, method, model, reference, *args, **kwargs):
        assert reference is None and model is not scorers[0]
        monkeypatch.setattr(scorers[0], "forward", refuse)
        return optimize(self, method, model, reference, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "reference_logprobs", once)
    monkeypatch.setattr(PreferenceTrainer, "optimize", training)
    summary = run(_config(tmp_path / "r", "methods=[dpo]", "kl_eval=none"))
    assert calls == [["held_out", "train"]] and 0 <= summary["dpo"]["held_out_reward_accuracy"]["mean"] <= 1


def test_every_process_looks_for_saved_reference_logprobs_before_any_writes(tmp_path, monkeypatch):
    """The race behind a 2-process hang: a process that looked for the saved log-probs after the
    main process had written them returned early, skipping the barrier the others waited at. Now
    every process looks, then all meet at a barrier, then (computing) the main process writes and
    all meet again: the same barriers on every process, whichever branch."""
    import types

    from divreg.recipes.preference import trainer as module

    events = []
    original_load = module.load_if_exists
    monkeypatch.setattr(module, "load_if_exists", lambda path: events.append("look") or original_load(path))
    monkeypatch.setattr(module, "save_atomic", lambda value, path: events.append("write") or torch.save(value, path))
    monkeypatch.setattr(module, "sequence_logprobs", lambda model, examples, pad, signal: torch.zeros(len(examples)))
    accelerator = types.SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: events.append("barrier"))
    trainer = module.PreferenceTrainer.__new__(module.PreferenceTrainer)
    trainer.accelerator, trainer.tokenizer, trainer.signal = accelerator, types.SimpleNamespace(pad_token_id=0), None
    pair = types.SimpleNamespace(chosen=types.SimpleNamespace(input_ids=[1, 2], labels=[-100, 2]),
                                 rejected=types.SimpleNamespace(input_ids=[1, 3], labels=[-100, 3]))
    monkeypatch.setattr(module, "examples_fingerprint", lambda examples: "same")
    path = str(tmp_path / "reference.pt")
    trainer.reference_logprobs(None, {"train": [pair]}, path)
    assert events == ["look", "barrier", "write", "barrier"]
    events.clear()
    trainer.reference_logprobs(None, {"train": [pair]}, path)  # a resumed run: saved before it started
    assert events == ["look", "barrier"]
