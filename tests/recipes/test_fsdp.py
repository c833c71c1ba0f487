"""FSDP2 through Accelerate (``configs/accelerate/fsdp.yaml``, 2 CPU processes over gloo) in the LM
commands: the same losses as one process (or, where each process samples its own completions, as
DDP with 2 processes), a killed run resumed exactly, the model folder written from the gathered
checkpoint, the fused kernel's output layer gathered once per forward, and every launcher option
divreg cannot honour refused in one line."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from divreg.training._fsdp import check_launcher_precision, refuse_under_fsdp, use_fsdp_if_asked

from ..launch import accelerate_prefix, free_port, kill_at_checkpoint
from . import lm_fixtures as fx
from .test_engine import BF16_REL_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"

RL = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=20", "warmup_batch_size=16", "steps=6",
      "prompts_per_step=4", "group_size=4", "max_new_tokens=3", "eval_every=2", "checkpoint_every=2", "seeds=[0]",
      "policy.config.hidden_size=16", "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=2"]
PREFERENCE = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=20", "warmup_batch_size=16",
              "warmup_target=null", "steps=4", "batch_size=8", "max_new_tokens=3", "eval_every=2", "checkpoint_every=2",
              "seeds=[0]", "kl_prompts=4", "methods=[dpo]", "policy.config.hidden_size=16",
              "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=2"]


def _fsdp_prefix() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
            "--main_process_port", str(free_port())]


def _command(kind: str, command: str, arguments: list[str]) -> list[str]:
    prefix = {"fsdp": _fsdp_prefix, "ddp": lambda: accelerate_prefix(2), "one": lambda: [sys.executable]}[kind]()
    return [*prefix, "-m", "divreg.cli", command, *arguments]


def _run(kind: str, command: str, arguments: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(kind, command, arguments), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _records(folder: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r["record"] == kind]


def _assert_same_numbers(got: list[dict], expected: list[dict], rtol: float, atol: float = 1e-7) -> None:
    assert [(r["run"], r["step"]) for r in got] == [(r["run"], r["step"]) for r in expected]
    for mine, theirs in zip(got, expected):
        for key, value in theirs.items():
            if isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=rtol, abs=atol), (mine["run"], mine["step"], key)


# -- the launcher options divreg cannot honour (no launch needed) ------------------------------------


@pytest.fixture
def fsdp_env(monkeypatch):
    """The environment ``accelerate launch --config_file fsdp.yaml`` gives its processes."""
    for key, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
                       "FSDP_ACTIVATION_CHECKPOINTING": "false", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                       "ACCELERATE_MIXED_PRECISION": "no"}.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def _two_cpu_processes():
    """What :func:`use_fsdp_if_asked` reads of a 2-process CPU Accelerator (Accelerate drops the plugin)."""
    return SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU,
                           state=SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, fsdp_plugin=None))


@pytest.mark.parametrize("variable, value, message", [
    ("FSDP_VERSION", "1", "fsdp_version: 1 in the accelerate config: divreg runs FSDP2 only; set fsdp_version: 2"),
    ("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT", "set fsdp_state_dict_type: FULL_STATE_DICT"),
    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "use the recipe's gradient_checkpointing=true instead"),
])
def test_launcher_options_divreg_cannot_honour_are_refused(fsdp_env, variable, value, message):
    fsdp_env.setenv(variable, value)
    accelerator = _two_cpu_processes()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        use_fsdp_if_asked(accelerator, "fp32")
    assert accelerator.state.distributed_type == DistributedType.MULTI_CPU  # nothing was turned on


def test_the_recipe_precision_decides_and_a_launcher_mismatch_is_refused(fsdp_env):
    fsdp_env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    check_launcher_precision("bf16")  # the same: fine
    with pytest.raises(ValueError, match="launcher asks for mixed_precision=bf16 but the recipe's precision=fp32"):
        check_launcher_precision("fp32")
    fsdp_env.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match="mixed_precision=fp16"):
        check_launcher_precision("bf16")


def test_options_that_need_a_whole_model_are_refused_under_fsdp():
    sharded = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(ValueError, match="kl_eval=exact .* cannot run under FSDP.*use kl_eval=sampled"):
        refuse_under_fsdp(sharded, "kl_eval=exact (the enumeration)", "use kl_eval=sampled")
    refuse_under_fsdp(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), "anything", "")  # not sharded


@pytest.mark.parametrize("command", ["select", "distill-classifier", "cache-teacher"])
def test_commands_without_a_sharded_model_refuse_fsdp(fsdp_env, command, capsys):
    from divreg.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([command])
    assert stopped.value.code == 2
    assert "FSDP is for distill-lm, rl, preference" in capsys.readouterr().err


# -- whole runs under FSDP (two processes) ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.alone  # two processes: make test runs it after the parallel tier
def test_fused_kernel_on_a_sharded_output_layer(tmp_path):
    """The fused JSD from a sharded student's hidden states: its gradients (gathered from the
    shards) equal one unsharded process's on the whole batch; the all-gathers of a step do not
    grow with the number of chunks (FSDP gathers the output layer once per forward); the shard
    itself is refused by the kernel and by ``output_weight`` with one line."""
    out = tmp_path / "kernel.pt"
    worker = Path(__file__).with_name("fsdp_kernel_worker.py")
    result = subprocess.run([*_fsdp_prefix(), str(worker), str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=False)
    assert saved["expected"].keys() == saved["got"].keys() and len(saved["got"]) == 21
    for name, gradient in saved["expected"].items():
        torch.testing.assert_close(saved["got"][name], gradient, rtol=1e-5, atol=1e-8, msg=name)
    _, one_chunk, many_chunks = saved["gathers"]
    assert one_chunk == many_chunks > 0  # (measured: 5 = root + 2 layers forward + 2 layers re-gathered in backward)
    assert saved["sharded_type"] == "DTensor"
    kernel, prop = saved["refusals"]
    assert kernel.startswith("weight is a sharded DTensor") and "gather it once before the call" in kernel
    assert prop.startswith("the output layer is sharded (FSDP) outside the model's forward")


@pytest.mark.slow
@pytest.mark.alone
def test_distill_lm_under_fsdp_gives_one_process_losses_and_loadable_models(tmp_path):
    """Teacher training and every off-policy student: each evaluation equal to one process's (the
    same global batches); the on-policy student (each process samples its own) equal to DDP's.
    The student folders are written from the gathered checkpoint and load with transformers."""
    arguments = fx.tiny_config_overrides("X", **{"student.config.num_hidden_layers": 2})[1:]
    runs = {kind: tmp_path / kind for kind in ("fsdp", "one", "ddp")}
    for kind, folder in runs.items():
        result = _run(kind, "distill-lm", [*arguments, f"output_dir={folder}"])
    assert "2 process(es)" in result.stdout
    evaluations = {kind: _records(folder, "evaluation") for kind, folder in runs.items()}
    on_policy = [r for r in evaluations["fsdp"] if r["run"].startswith("on_policy")]
    assert on_policy  # the default methods include one
    _assert_same_numbers([r for r in evaluations["fsdp"] if r not in on_policy],
                         [r for r in evaluations["one"] if not r["run"].startswith("on_policy")], rtol=1e-5)
    _assert_same_numbers(evaluations["fsdp"], evaluations["ddp"], rtol=1e-5)
    from transformers import AutoModelForCausalLM

    folder = runs["fsdp"] / "models" / "jsd"
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    state = torch.load(runs["fsdp"] / "checkpoints" / "jsd.pt", weights_only=False)["model"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name


@pytest.mark.slow
@pytest.mark.alone
def test_preference_under_fsdp_gives_one_process_losses(tmp_path):
    """The warm-up and DPO (precomputed reference log-probs): every step's loss and every
    evaluation equal to one process's; KL evaluation is sampled under FSDP (auto). With
    precision=bf16, every step's loss within the bf16 tolerance of fp32's and finite.
    kl_eval=exact is refused before training."""
    runs = {kind: tmp_path / kind for kind in ("fsdp", "one")}
    for kind, folder in runs.items():
        _run(kind, "preference", [*PREFERENCE, f"output_dir={folder}"])
    # (atol: the log-ratios are differences of float32 sequence log-probs of order 10, summed in another
    # order over 2 processes: 3.0e-7 apart at most, measured; a few float32 roundings of 10)
    _assert_same_numbers(_records(runs["fsdp"], "step"), _records(runs["one"], "step"), rtol=1e-5, atol=5e-6)
    fsdp_eval, one_eval = (_records(runs[k], "evaluation") for k in ("fsdp", "one"))
    for record in (*fsdp_eval, *one_eval):
        record.pop("kl", None)  # exact by enumeration in one process, sampled under FSDP: two estimators
    _assert_same_numbers(fsdp_eval, one_eval, rtol=1e-5, atol=5e-6)
    # bf16 under FSDP (FSDP2's mixed precision: bf16 compute, fp32 master weights, fp32 gradient reduction)
    bf16 = tmp_path / "bf16"
    _run("fsdp", "preference", [*PREFERENCE, f"output_dir={bf16}", "precision=bf16"])
    for mine, theirs in zip(_records(bf16, "step"), _records(runs["fsdp"], "step"), strict=True):
        assert all(math.isfinite(value) for value in mine.values() if isinstance(value, float))
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=BF16_REL_TOLERANCE), (mine["run"], mine["step"])
    exact = subprocess.run(_command("fsdp", "preference", [*PREFERENCE, f"output_dir={tmp_path / 'exact'}",
                                                           "kl_eval=exact"]), capture_output=True, text=True,
                           timeout=300)
    assert exact.returncode != 0
    assert ("divreg preference: error: kl_eval=exact (the enumeration drives the policy's own KV cache) cannot run "
            "under FSDP") in exact.stderr
    assert not (tmp_path / "exact" / "checkpoints").exists()  # refused before any training


@pytest.mark.slow
@pytest.mark.alone
def test_rl_under_fsdp_equals_ddp_and_resumes_exactly(tmp_path):
    """GRPO under FSDP: every step's loss and evaluation equal to DDP's with 2 processes (each
    process samples its own completions, so one process differs by design). Killed after a
    mid-run checkpoint and resumed with resume=true, the run ends with the same weights (bitwise)
    and the same log as the uninterrupted one."""
    runs = {kind: tmp_path / kind for kind in ("fsdp", "ddp")}
    for kind, folder in runs.items():
        _run(kind, "rl", [*RL, f"output_dir={folder}"])
    for record in ("step", "evaluation"):
        _assert_same_numbers(_records(runs["fsdp"], record), _records(runs["ddp"], record), rtol=1e-5)
    killed = tmp_path / "killed"
    victim = subprocess.Popen(_command("fsdp", "rl", [*RL, f"output_dir={killed}"]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = kill_at_checkpoint(victim, killed / "checkpoints" / "grpo-seed0.pt", lambda c: not c["state"]["done"],
                               group=True)["state"]  # the launcher and both workers at once
    assert 0 < state["step"] < 6
    _run("fsdp", "rl", [*RL, f"output_dir={killed}", "resume=true"])
    for name in ("warmup-seed0.pt", "grpo-seed0.pt"):
        expected = torch.load(runs["fsdp"] / "checkpoints" / name, weights_only=False)
        got = torch.load(killed / "checkpoints" / name, weights_only=False)
        for key, tensor in expected["model"].items():
            assert torch.equal(tensor, got["model"][key]), (name, key)
    assert (killed / "metrics.jsonl").read_text() == (runs["fsdp"] / "metrics.jsonl").read_text()


def test_a_checkpoint_resumes_only_under_the_sharding_that_wrote_it():
    """A checkpoint's optimizer state is keyed by parameter name under FSDP and by index without:
    resuming under the other launcher configuration is one line, not a KeyError deep in torch."""
    from divreg.training._fsdp import load_full_state

    model = fx.model(seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    whole = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, unwrap_model=lambda m: m)
    with pytest.raises(ValueError, match="written with FSDP and the run resumes without it: resume with the launcher"):
        load_full_state(whole, model, optimizer, model.state_dict(), {"fsdp": {}})
    sharded = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(ValueError, match="written without FSDP and the run resumes with it"):
        load_full_state(sharded, model, optimizer, model.state_dict(), optimizer.state_dict())
    load_full_state(whole, model, optimizer, model.state_dict(), optimizer.state_dict())  # the same: loads
