"""The engine options of every LM command: bf16 mixed precision (fp32 master weights, losses in
fp32) and gradient checkpointing (the same gradients, recomputed)."""

import json
import math

import pytest
import torch

from divreg.config import load_config
from divreg.recipes.lm_distillation import DistillLMConfig
from divreg.recipes.lm_distillation import run as distill
from divreg.recipes.preference import PreferenceConfig
from divreg.recipes.preference import run as preference
from divreg.recipes.rl import RLConfig
from divreg.recipes.rl import run as rl

from . import lm_fixtures
from .test_export import PREFERENCE_TINY
from .test_rl import TINY as RL_TINY

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)

# bf16 keeps 8 bits of mantissa (a relative rounding of 2^-9 = 2e-3 per operation). Measured on these tiny models
# (_run below with and without precision=bf16, the first record of each run): distill-lm's loss 7.7e-4
# relative, rl's entropy 6.1e-7, preference's held-out unseen mass 7.7e-8; the tolerance, 5e-3, leaves a factor 6
BF16_REL_TOLERANCE = 5e-3


# per command: the loss, and a quantity the model computes (at step 1 the RL and DPO losses do not depend on the
# model's numbers: the policy is its own reference, the ratio is 1 and the margin 0)
KEYS = {"distill-lm": ("loss", "loss"), "rl": ("loss", "entropy"), "preference": ("loss", "held_out_unseen_mass")}


def _run(command, out, *extra):
    if command == "distill-lm":
        distill(load_config(DistillLMConfig, None, [*lm_fixtures.tiny_config_overrides(
            str(out), methods="[forward_kl]", checkpoint_every=0, eval_every=1, steps=3), *extra]))
    elif command == "rl":
        rl(load_config(RLConfig, None, [*RL_TINY, "warmup_steps=0", "eval_every=1", f"output_dir={out}", *extra]))
    else:
        preference(load_config(PreferenceConfig, None, [*PREFERENCE_TINY, "warmup_steps=0", "eval_every=1",
                                                        f"output_dir={out}", *extra]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["run"] != "teacher" and not r["run"].startswith("warmup")]


def _first(records, key):
    return next(r[key] for r in records if key in r)


@pytest.mark.parametrize("command", ["distill-lm", "rl", "preference"])
def test_bf16_follows_fp32_and_stays_finite(tmp_path, command):
    fp32 = _run(command, tmp_path / "fp32")
    bf16 = _run(command, tmp_path / "bf16", "precision=bf16")
    loss, computed = KEYS[command]
    assert _first(bf16, loss) == pytest.approx(_first(fp32, loss), rel=BF16_REL_TOLERANCE)
    assert _first(bf16, computed) == pytest.approx(_first(fp32, computed), rel=BF16_REL_TOLERANCE)
    assert _first(bf16, computed) != _first(fp32, computed)  # bf16 did run: not the fp32 numbers
    for record in bf16:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record


def _grads(model, ids, eval_mode, after_generation=lambda: None):
    model.zero_grad()
    if eval_mode:
        model.eval()
        model.checkpointing_in_eval()
        if eval_mode == "after_generation":  # as an RL or HyPO step: sample, then score in the same mode
            from divreg.models import generate_examples

            generate_examples(model, [[1, 2, 3]], lm_fixtures.tokenizer(), max_new_tokens=3, seed=0)
            after_generation()
    else:
        model.train()
    model(ids, torch.ones_like(ids)).float().logsumexp(-1).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("eval_mode", [False, True, "after_generation"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(eval_mode):
    """Checkpointing is active (the layer's forward runs again in the backward pass) in training
    mode, in eval mode with the layers put back in training mode, and after a generation in that
    mode (a generation once reset every module to one mode, turning checkpointing off for the
    GRPO and HyPO losses that follow their sampling)."""
    from divreg.recipes._engine import trainable

    plain = lm_fixtures.model(seed=0, num_hidden_layers=2)
    checkpointed = trainable(lm_fixtures.model(seed=0, num_hidden_layers=2),
                             load_config(RLConfig, None, ["gradient_checkpointing=true"]))
    calls, mlp = [], checkpointed.model.model.layers[0].mlp  # a part inside the first layer
    forward = mlp.forward
    mlp.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)  # (hooks do not see a recompute)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    expected, got = _grads(plain, ids, eval_mode), _grads(checkpointed, ids, eval_mode, calls.clear)
    assert len(calls) == 2  # the layer ran again in the backward pass: checkpointing was active
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-6, atol=1e-9), name


def test_gradient_checkpointing_leaves_an_rl_run_unchanged(tmp_path):
    plain = _run("rl", tmp_path / "plain")
    checkpointed = _run("rl", tmp_path / "checkpointed", "gradient_checkpointing=true")
    # recomputing a layer repeats the same float operations on the CPU: the same run, bitwise (measured)
    assert [r["loss"] for r in plain] == [r["loss"] for r in checkpointed]
    a = torch.load(tmp_path / "plain" / "checkpoints" / "grpo-seed0.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "checkpointed" / "checkpoints" / "grpo-seed0.pt", weights_only=False)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_bad_precision_is_one_line():
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'fp16'"):
        load_config(RLConfig, None, ["precision=fp16"])


@pytest.mark.parametrize("command", ["distill-lm", "rl", "preference"])
def test_half_fine_tuning_trains_only_the_drawn_half(tmp_path, command, monkeypatch):
    """half_fine_tuning=true: the parameters HFT draws keep the values they had when frozen, every
    other decoder-layer matrix moves; lora together with it is refused."""
    import divreg.recipes._engine as engine

    seen = []

    def recording(model, seed):
        mask = apply(model, seed)
        seen.append(({n: p.detach().clone() for n, p in model.named_parameters()}, mask))
        return mask

    apply = engine.apply_half_fine_tuning
    monkeypatch.setattr(engine, "apply_half_fine_tuning", recording)
    _run(command, tmp_path / "hft", "half_fine_tuning=true")
    name = {"distill-lm": "forward_kl.pt", "rl": "grpo-seed0.pt", "preference": "dpo-seed0.pt"}[command]
    trained = torch.load(tmp_path / "hft" / "checkpoints" / name, weights_only=False)["model"]
    start, mask = seen[-1]
    assert 0.3 < mask.frozen_share < 0.7
    moved = {n for n in start if ".layers." in n and not torch.equal(trained["model." + n], start[n])}
    assert moved and not moved & set(mask.frozen)  # the frozen half never moved, the other half did
    assert {n for n in start if ".layers." in n and n.endswith("proj.weight")} - set(mask.frozen) <= moved
    with pytest.raises(ValueError, match="choose one"):
        load_config(RLConfig, None, ["half_fine_tuning=true", "lora={r: 4}"])


def test_half_fine_tuning_on_another_architecture_stops_before_anything_runs(tmp_path):
    """A model whose layers are not Llama-named is refused at setup, before the warm-up trains or
    the run folder is written (the check reads a skeleton on the meta device)."""
    out = tmp_path / "gpt2"
    with pytest.raises(ValueError, match="half_fine_tuning=true: half fine-tuning needs decoder layers named"):
        rl(load_config(RLConfig, None, [*RL_TINY, "half_fine_tuning=true", f"output_dir={out}",
                                        "policy.config={model_type: gpt2, n_embd: 16, n_layer: 1, n_head: 2}"]))
    assert not out.exists()
