"""Every LM command writes each trained model as a Hugging Face folder (weights, config,
tokenizer) that from_pretrained loads with the same logits as the trained module; divreg export
rebuilds such folders from checkpoints (a stopped run, an earlier checkpoint)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from divreg.cli import main
from divreg.config import load_config
from divreg.models import CausalLM, ModelSource, build_causal_lm, save_model_folder
from divreg.recipes.export import ExportConfig
from divreg.recipes.export import run as export
from divreg.recipes.lm_distillation import DistillLMConfig
from divreg.recipes.lm_distillation import run as distill
from divreg.recipes.preference import PreferenceConfig
from divreg.recipes.preference import run as preference
from divreg.recipes.rl import RLConfig
from divreg.recipes.rl import run as rl

from . import lm_fixtures
from .test_rl import TINY as RL_TINY

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)

PREFERENCE_TINY = ["digits=1", "train_size=40", "test_size=10", "warmup_steps=10", "warmup_target=null",
                   "warmup_batch_size=8", "steps=2", "batch_size=8", "eval_every=2", "seeds=[0]", "methods=[dpo]",
                   "kl_eval=none", "rejected_samples=2", "policy.config.hidden_size=16",
                   "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=1"]


def _same_logits(folder, checkpoint):
    """The folder's model (from_pretrained) and the checkpoint's trained module give equal logits."""
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    state = torch.load(checkpoint, weights_only=False)["model"]
    module = AutoModelForCausalLM.from_config(loaded.config)
    module.load_state_dict({k[len("model."):]: v for k, v in state.items()})
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]]) % loaded.config.vocab_size
    with torch.no_grad():
        return torch.equal(loaded(ids).logits, module.eval()(ids).logits)


@pytest.mark.parametrize("command", ["distill-lm", "rl", "preference"])
def test_every_lm_command_writes_loadable_model_folders(tmp_path, command):
    out = tmp_path / "run"
    if command == "distill-lm":
        distill(load_config(DistillLMConfig, None, lm_fixtures.tiny_config_overrides(str(out), methods="[forward_kl]",
                                                                                    checkpoint_every=0)))
        name = "forward_kl"
        assert AutoTokenizer.from_pretrained(str(out / "teacher")) is not None  # the teacher folder has its tokenizer
    elif command == "rl":
        rl(load_config(RLConfig, None, [*RL_TINY, f"output_dir={out}"]))
        name = "grpo-seed0"
    else:
        preference(load_config(PreferenceConfig, None, [*PREFERENCE_TINY, f"output_dir={out}"]))
        name = "dpo-seed0"
    folder = out / "models" / name
    assert json.loads((folder / "divreg_model.json").read_text()) == {"checkpoint": f"checkpoints/{name}.pt",
                                                                      "weights": True}
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists()
    assert _same_logits(str(folder), out / "checkpoints" / f"{name}.pt")


def test_export_completes_the_folders_of_a_stopped_run(tmp_path, capsys):
    out = tmp_path / "run"
    rl(load_config(RLConfig, None, [*RL_TINY, f"output_dir={out}"]))
    folder = out / "models" / "grpo-seed0"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    skeleton = AutoModelForCausalLM.from_pretrained(str(folder))
    save_model_folder(skeleton, tokenizer, str(folder), checkpoint="checkpoints/grpo-seed0.pt", weights=False)
    assert not (folder / "model.safetensors").exists()  # what a run stopped before its end leaves
    assert main(["export", str(out)]) == 0
    assert "grpo-seed0" in capsys.readouterr().out
    assert _same_logits(str(folder), out / "checkpoints" / "grpo-seed0.pt")
    # an earlier checkpoint, by name: the warm-up's weights
    export(load_config(ExportConfig, None, [f"run_dir={out}", "name=grpo-seed0",
                                            f"checkpoint={out / 'checkpoints' / 'warmup-seed0.pt'}"]))
    assert _same_logits(str(folder), out / "checkpoints" / "warmup-seed0.pt")


@pytest.mark.parametrize("extra,message", [
    ([], "has no models/ folder"),
    (["name=nope"], r"no model folder 'nope'"),
    (["checkpoint=x.pt"], "checkpoint= names one checkpoint: give name="),
])
def test_export_errors_are_one_line(tmp_path, extra, message):
    out = tmp_path / "run"
    if extra:
        tokenizer = lm_fixtures.tokenizer()
        model = CausalLM(build_causal_lm(ModelSource(config=lm_fixtures.TINY_LLAMA), tokenizer, 0))
        save_model_folder(model, tokenizer, str(out / "models" / "m"), checkpoint="checkpoints/m.pt", weights=False)
    with pytest.raises(ValueError, match=message):
        export(load_config(ExportConfig, None, [f"run_dir={out}", *extra]))


def test_export_refuses_a_missing_or_damaged_checkpoint(tmp_path):
    tokenizer = lm_fixtures.tokenizer()
    model = CausalLM(build_causal_lm(ModelSource(config=lm_fixtures.TINY_LLAMA), tokenizer, 0))
    save_model_folder(model, tokenizer, str(tmp_path / "models" / "m"), checkpoint="checkpoints/m.pt", weights=False)
    with pytest.raises(ValueError, match=r"its checkpoint .*checkpoints/m.pt' does not exist"):
        export(load_config(ExportConfig, None, [f"run_dir={tmp_path}"]))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "m.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"m.pt cannot be read as a checkpoint .*it may be truncated"):
        export(load_config(ExportConfig, None, [f"run_dir={tmp_path}"]))
