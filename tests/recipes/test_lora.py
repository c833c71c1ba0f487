"""LoRA adapters (peft) in the LM commands: only the adapters train; a reference that is the
starting model is the same model with its adapters off (equal to a separate frozen copy, with no
second copy of the weights); the exported folder is the merged model plus the adapter."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from divreg.cli import main
from divreg.config import load_config
from divreg.models import AdaptersOff, CausalLM, ModelSource, add_lora, build_causal_lm, save_model_folder
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


def _adapted_pair():
    """A model with trained-looking (non-zero) adapters, and a separate copy of its base."""
    base = lm_fixtures.model(seed=0, num_hidden_layers=2)
    copy_of_base = copy.deepcopy(base).eval()
    adapted = add_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return adapted.eval(), copy_of_base


def test_the_adapters_off_reference_is_the_frozen_copy():
    adapted, base = _adapted_pair()
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    reference = AdaptersOff(adapted)
    with torch.no_grad():
        assert torch.equal(reference(ids, mask), base(ids, mask))
        assert torch.equal(reference(ids, mask, hidden=True), base(ids, mask, hidden=True))
        assert not torch.allclose(adapted(ids, mask), base(ids, mask))  # the adapters are on outside the reference
    assert torch.equal(reference.output_weight, base.output_weight) and reference.vocab_size == base.vocab_size
    assert reference(ids, mask).grad_fn is None  # no gradient through the reference
    shared = {p.data_ptr() for p in adapted.parameters()}
    assert {p.data_ptr() for n, p in adapted.named_parameters() if "lora_" not in n} <= shared  # no second copy


def test_an_rl_run_trains_only_the_adapters_against_the_starting_model(tmp_path):
    out = tmp_path / "run"
    rl(load_config(RLConfig, None, [*RL_TINY, "warmup_steps=0", "lora={r: 4}", "kl_estimator=exact",
                                    f"output_dir={out}"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["record"] == "step"]
    assert steps[0]["kl_exact"] == 0.0 and steps[-1]["kl_exact"] > 0  # the reference is the starting model
    state = torch.load(out / "checkpoints" / "grpo-seed0.pt", weights_only=False)["model"]
    # only the adapters moved: every base weight is still the starting policy's (built under seed 0)
    from divreg.data import char_tokenizer
    from divreg.recipes._engine import build_policy

    config = load_config(RLConfig, None, [*RL_TINY, "warmup_steps=0"])
    start = build_policy(config.policy, char_tokenizer(), 0, config, lora=False).state_dict()
    base = {k.replace("model.base_model.model.", "model.").replace(".base_layer.", "."): v
            for k, v in state.items() if ".lora_" not in k}
    assert base.keys() == start.keys() and all(torch.equal(base[k], start[k]) for k in start)
    assert any(".lora_A." in k for k in state) and any(
        not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if ".lora_B." in k)  # the adapters trained
    # the merged export equals the adapted module, and the adapter folder is there
    folder = out / "models" / "grpo-seed0"
    assert (folder / "adapter" / "adapter_config.json").exists() and (folder / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    from peft import LoraConfig, get_peft_model  # rebuild the adapted module from the checkpoint
    adapted = get_peft_model(AutoModelForCausalLM.from_config(merged.config), LoraConfig.from_pretrained(
        str(folder / "adapter")))
    adapted.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    ids = torch.tensor([[1, 2, 3, 4, 5]]) % merged.config.vocab_size
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted.eval()(ids).logits, atol=1e-5)
    # divreg export rebuilds the LoRA folder from the checkpoint
    save_model_folder(adapted, lm_fixtures.tokenizer(), str(folder), checkpoint="checkpoints/grpo-seed0.pt",
                      weights=False)
    assert not (folder / "model.safetensors").exists()
    assert main(["export", str(out)]) == 0
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(str(folder))(ids).logits,
                              adapted.eval()(ids).logits, atol=1e-5)


def test_preference_and_distillation_run_with_lora(tmp_path):
    summary = preference(load_config(PreferenceConfig, None, [*PREFERENCE_TINY, "lora={r: 4}", "methods=[dpo,hypo]",
                                                              "hypo_samples=2", f"output_dir={tmp_path / 'p'}"]))
    assert summary is not None and (tmp_path / "p" / "models" / "hypo-seed0" / "adapter").is_dir()
    distill(load_config(DistillLMConfig, None, [*lm_fixtures.tiny_config_overrides(
        str(tmp_path / "d"), methods="[forward_kl]", checkpoint_every=0), "lora={r: 4}"]))
    state = torch.load(tmp_path / "d" / "checkpoints" / "forward_kl.pt", weights_only=False)["model"]
    assert any(".lora_B." in k for k in state)


@pytest.mark.parametrize("targets,message", [
    ("[lm_head]", "names the output layer or the embeddings"),
    ("[no_such_proj]", "peft cannot adapt this LlamaForCausalLM with target_modules=\\['no_such_proj'\\]"),
])
def test_a_bad_lora_target_is_one_line(tmp_path, targets, message):
    with pytest.raises(ValueError, match=message):
        rl(load_config(RLConfig, None, [*RL_TINY, "warmup_steps=0", f"lora={{r: 4, target_modules: {targets}}}",
                                        f"output_dir={tmp_path / 'run'}"]))


def test_the_adapters_off_reference_samples_as_the_frozen_copy(tmp_path):
    """CTRL samples the reference: with LoRA, the policy with its adapters off draws the same
    completions as a separate frozen copy, for the same seed; and an rl run with ctrl and lora runs."""
    from divreg.models import generate_examples

    adapted, base = _adapted_pair()
    prompts = [[1, 2, 3], [4, 5]]
    tokenizer = lm_fixtures.tokenizer()
    off = generate_examples(AdaptersOff(adapted), prompts, tokenizer, 6, seed=3)
    copy_samples = generate_examples(base, prompts, tokenizer, 6, seed=3)
    assert [e.input_ids for e in off] == [e.input_ids for e in copy_samples]
    rl(load_config(RLConfig, None, [*RL_TINY, "warmup_steps=0", "lora={r: 4}", "ctrl=best_of_n", "ctrl_t=2",
                                    "ctrl_samples=2", f"output_dir={tmp_path / 'ctrl'}"]))
    records = [json.loads(line) for line in (tmp_path / "ctrl" / "metrics.jsonl").read_text().splitlines()]
    assert all("ctrl_reward" in r for r in records if r["record"] == "step")


def test_the_exact_sequence_kl_to_the_adapters_off_reference_is_the_kl_to_the_frozen_copy():
    """preference's kl_eval=exact enumerates completions with the reference's KV cache: with LoRA,
    the policy with its adapters off gives the same exact KL as a separate frozen copy."""
    from divreg.data import char_tokenizer
    from divreg.models import exact_sequence_kl

    tokenizer = char_tokenizer()
    base = CausalLM(build_causal_lm(ModelSource(config={"model_type": "llama", "hidden_size": 16,
                                                        "num_hidden_layers": 1, "num_attention_heads": 2,
                                                        "intermediate_size": 32}), tokenizer, 0), len(tokenizer))
    frozen_copy = copy.deepcopy(base).eval()
    policy = add_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], seed=1)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    prompts = [tokenizer("1+2=")["input_ids"], tokenizer("3+4=")["input_ids"]]
    args = (prompts, tokenizer.eos_token_id, 3)
    with torch.no_grad():
        adapters_off = exact_sequence_kl(policy.eval(), AdaptersOff(policy), *args)
        separate = exact_sequence_kl(policy, frozen_copy, *args)
    assert torch.allclose(adapters_off, separate, rtol=1e-12, atol=1e-14) and bool((separate > 0).all())
