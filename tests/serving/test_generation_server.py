"""vLLM as the generation engine (``generation.server``) against the session's real server: the
weight sync is checked on a probe, the sampler's log-probs are the tempered ones the trainer
computes for the same tokens, sampling is reproducible, and ``divreg rl`` runs on it with the
mismatch logged (and ~0 for the same fp32 weights). The server's original weights are put back at
the end, for the other serving tests."""

import json

import pytest
import torch

from divreg.serving import ServedSampler

from .conftest import served_model

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.alone]


@pytest.fixture
def sampler(served, tmp_path):
    server, _, original, tokenizer = served
    sampler = ServedSampler(server.url, tokenizer, str(tmp_path / "sync"))
    yield sampler
    sampler.sync(original)  # the server as the session started it


def test_sync_then_sample_with_the_trainers_tempered_logprobs(sampler, served):
    _, _, _, tokenizer = served
    trained = served_model(seed=5)
    stats = sampler.sync(trained)
    assert stats["sync_probe_error"] < 1e-5 and stats["sync_seconds"] > 0
    prompts = [[5, 6, 7, 8], [40, 41], [100, 7, 9, 12, 3]]
    samples = sampler.sample(prompts, copies=2, max_new_tokens=6, temperature=0.7, seed=11)
    assert len(samples) == 6 and samples == sampler.sample(prompts, 2, 6, 0.7, seed=11)  # reproducible
    assert samples != sampler.sample(prompts, 2, 6, 0.7, seed=12)
    for index, (ids, logprobs) in enumerate(samples):
        prompt = prompts[index // 2]
        assert 1 <= len(ids) == len(logprobs) <= 6
        sequence = torch.tensor([prompt + ids])
        with torch.no_grad():
            logits = trained(sequence, torch.ones_like(sequence))[0, len(prompt) - 1:-1].double()
        expected = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(logprobs, dtype=torch.float64), expected, atol=1e-4, rtol=0)


def test_a_lora_policy_syncs_as_its_merged_weights(sampler, served):
    """The server holds W + B A alpha / r after the sync (checked on the probe against the model
    with its adapters active), and the model itself is untouched (no merge and unmerge)."""
    from divreg.models import add_lora

    model = add_lora(served_model(seed=7), 4, 8.0, 0.0, ["q_proj", "v_proj", "down_proj"], seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters away from their zero start, so the merge matters
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert sampler.sync(model)["sync_probe_error"] < 1e-5
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    prompt = [5, 6, 7, 8]
    (ids, logprobs), = sampler.sample([prompt], copies=1, max_new_tokens=5, temperature=1.0, seed=3)
    sequence = torch.tensor([prompt + ids])
    with torch.no_grad():
        logits = model(sequence, torch.ones_like(sequence))[0, len(prompt) - 1:-1].double()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(logprobs, dtype=torch.float64), expected, atol=1e-4, rtol=0)


def test_a_sync_the_probe_disagrees_with_is_an_error(served, tmp_path):
    server, _, original, tokenizer = served
    strict = ServedSampler(server.url, tokenizer, str(tmp_path / "sync"), tolerance=1e-12)
    with pytest.raises(RuntimeError, match="after the weight sync the server's log-probs differ from the trainer's"):
        strict.sync(served_model(seed=6))
    strict.tolerance = 1e-3
    strict.sync(original)


def test_rl_samples_from_the_server(sampler, served, tmp_path):
    from divreg.cli import main

    server, folder, _, _ = served
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a} + {b} =", "answer": str(a + b)}) + "\n"
                            for a in range(6) for b in range(4)))
    arguments = [f"policy.path={folder}", f"data={data}", "rewards={exact_match: 1.0}", "steps=3", "eval_every=3",
                 "prompts_per_step=2", "group_size=2", "max_new_tokens=5", "temperature=0.8",
                 f"generation.server={server.url}", "seeds=[0]"]
    for name, extra in (("plain", []), ("tis", ["sampler_correction=tis"]), ("lora", ["lora.r=4"])):
        assert main(["rl", *arguments, *extra, f"output_dir={tmp_path / name}"]) == 0
        steps = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["record"] == "step"]
        assert len(steps) == 3
        for record in steps:
            assert record["sync_probe_error"] < 1e-4 and record["sync_seconds"] > 0
            assert abs(record["mismatch_log_ratio"]) < 1e-4 and 0 <= record["mismatch_k3"] < 1e-6  # same fp32 weights


def test_on_policy_distillation_and_hypo_sample_from_the_server(sampler, served, tmp_path):
    """distill-lm's on-policy student and preference's HyPO samples come from the server (synced
    each step: the sync's figures in the step log); the runs complete."""
    from divreg.cli import main

    server, folder, _, _ = served
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}) + "\n"
                             for a in range(8) for b in range(5)))
    assert main(["distill-lm", f"data={texts}", f"tokenizer={folder}", f"teacher.path={folder}", f"student.path={folder}",
                 "teacher_train_steps=0", "steps=2", "eval_every=2", "batch_size=4", "eval_examples=4", "seq_len=24",
                 "max_new_tokens=4", "methods=[{name: gkd, divergence: reverse_kl, lmbda: 1.0}]",
                 f"generation.server={server.url}", f"output_dir={tmp_path / 'distill'}"]) == 0
    steps = [json.loads(line) for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert steps and all(r["sync_probe_error"] < 1e-4 for r in steps)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a} plus {b} is", "chosen": f" {a + b}", "rejected": f" {a + b + 1}"})
                             + "\n" for a in range(8) for b in range(5)))
    assert main(["preference", f"data={pairs}", f"policy.path={folder}", "methods=[hypo]", "steps=2", "eval_every=2",
                 "batch_size=4", "warmup_steps=0", "warmup_target=null", "kl_eval=none", "seeds=[0]",
                 f"generation.server={server.url}", f"output_dir={tmp_path / 'hypo'}"]) == 0
    records = [json.loads(line) for line in (tmp_path / "hypo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sync_probe_error"] < 1e-4 for r in records if r["record"] == "step"] == [True, True]
