"""KL-regularized RL of a language model (``divreg rl``): per seed, a supervised warm-up on a
verifiable task, then GRPO with a KL to the frozen warm-up model, every KL choice an explicit
option (:class:`divreg.losses.GRPOLoss`).

setup -> (per seed) warm-up -> GRPO -> report. Built-in default: integer arithmetic generated
by :func:`divreg.data.arithmetic_problems`, a character tokenizer and a tiny Llama-style policy
built from a config (nothing is downloaded; ``policy.path`` loads any ``AutoModelForCausalLM``).
Outputs in ``output_dir``: ``config.yaml``, ``metrics.json``, ``metrics.jsonl`` (one record per
GRPO step: reward, estimated and exact KL, their gap, the fraction of negative k1, entropy, the
KL coefficient; and one per evaluation: those means since the last one and the test accuracy),
``curves.png`` and ``checkpoints/``.
"""

from __future__ import annotations

import functools
import json
import os

from ..._table import format_table
from ...data import (PromptExample, TextExample, arithmetic_problems, char_tokenizer, load_prompt_records, task_records,
                    tokenize_prompts, tokenize_records)
from ...rl import check_reward_signature, reward_function
from ...metrics import training_curves
from ...models import AdaptersOff, CausalLM, build_causal_lm, load_tokenizer, model_tokenizer
from ...training import load_weights, mean_std, prepare_run_folder, refuse_under_fsdp, run_recipe
from .._engine import build_policy, check_trainable, frozen
from .._export import exported
from .config import RLConfig
from .trainer import RLTrainer, prompt_difficulties

__all__ = ["RLConfig", "RLRecipe", "run"]


class RLRecipe:
    """``divreg rl`` for :func:`divreg.training.run_recipe`: setup, per seed warm-up then GRPO, report."""

    def __init__(self, config: RLConfig, accelerator):
        self.config, self.accelerator = config, accelerator

    def setup(self) -> None:
        """The tokenizer, the prompts, the reward functions, the run folder and the trainer (every
        check first, so a user error stops before anything is written)."""
        config, accelerator = self.config, self.accelerator
        if config.generation.server:
            refuse_under_fsdp(accelerator, "generation.server (the main process writes the whole model for each sync)",
                              "run it with DDP (accelerate launch --multi_gpu) or one process")
        tokenizer = char_tokenizer() if config.tokenizer == "builtin" else load_tokenizer(config.tokenizer)
        if config.reference is not None and model_tokenizer(config.reference, tokenizer) is not tokenizer:
            raise ValueError(f"reference.path {config.reference.path!r} ships its own tokenizer, which differs from the "
                             f"run's ({config.tokenizer!r}); a KL between the two models needs one vocabulary (a "
                             "teacher with another tokenizer is not supported here)")
        if model_tokenizer(config.policy, tokenizer) is not tokenizer:
            raise ValueError(f"policy.path {config.policy.path!r} ships its own tokenizer, which differs from tokenizer="
                             f"{config.tokenizer!r}; the policy, its reference and the rewards must read one tokenizer: "
                             "pass the policy's (tokenizer=<policy.path>)")
        train, test, warmup_examples = (builtin_prompts(config, tokenizer) if config.data == "builtin"
                                        else user_prompts(config, tokenizer))
        check_batches(config, accelerator.num_processes, len(train))
        columns = sorted({key for prompt in train + test for key in prompt.columns})
        functions = reward_functions(config, columns)
        check_trainable(config, config.policy, tokenizer)  # before any training (e.g. a warm-up)
        if config.curriculum != "uniform":  # every prompt's difficulty, before anything is written
            prompt_difficulties(train, config)
        _, log_path = prepare_run_folder(accelerator, config.output_dir, config.resume, config, config.overwrite)
        self.tokenizer, self.train, self.test = tokenizer, train, test
        self.trainer = RLTrainer(accelerator, config, tokenizer, train, test, warmup_examples, log_path, functions,
                                 columns)

    def run_seed(self, seed: int) -> dict:
        return run_seed(self.config, self.trainer, self.tokenizer, seed)

    def report(self, results: dict[int, dict]) -> dict:
        return report(self.config, results)

    def describe(self) -> str:
        source = "problems" if self.config.data == "builtin" else f"prompts of {self.config.data}"
        return (f"{len(self.config.seeds)} seed(s), {self.config.steps} GRPO steps each, on {len(self.train)} train / "
                f"{len(self.test)} held-out {source}")


def builtin_prompts(config: RLConfig, tokenizer) -> tuple[list[PromptExample], list[PromptExample], list[TextExample]]:
    """The arithmetic task's training and test prompts (with their ``answer`` column) and its
    warm-up examples (prompt -> answer); a prompt's ids are those its warm-up example starts with."""
    problems = arithmetic_problems(config.train_size, config.test_size, digits=config.digits,
                                   operations=config.operations, seed=config.data_seed)
    sets = []
    for split in problems:
        examples = tokenize_records(task_records(split), tokenizer, max_length=64, prompt_len=1)
        if len(examples) != len(split):
            raise ValueError(f"{len(split) - len(examples)} problems do not fit the tokenizer's examples (prompt + "
                             "answer + EOS within 64 tokens); use a tokenizer with shorter prompts")
        sets.append(([PromptExample(p.prompt, e.input_ids[:e.prompt_length], {"answer": p.answer},
                                    f"built-in problem {i}") for i, (p, e) in enumerate(zip(split, examples))], examples))
    (train, warmup_examples), (test, _) = sets
    return train, test, warmup_examples


def user_prompts(config: RLConfig, tokenizer) -> tuple[list[PromptExample], list[PromptExample], list[TextExample]]:
    """Your prompt set's training and held-out prompts (``held_out``, else the first tenth of
    ``data``), and, when a warm-up is asked for, its examples (``prompt`` -> ``completion``)."""
    records = load_prompt_records(config.data)
    if config.held_out is None:
        if len(records) < 2:
            raise ValueError(f"{config.data}: one prompt cannot be split into training and held-out prompts; give "
                             "more prompts or held_out=FILE")
        cut = max(1, len(records) // 10)
        held, records = records[:cut], records[cut:]
    else:
        held = load_prompt_records(config.held_out)
    kinds = {isinstance(r["prompt"], str) for r in records + held}
    if len(kinds) > 1:  # the reward functions get one form per call (strings, or message lists), as in TRL
        raise ValueError(f"the prompts of {config.data}" + (f" and {config.held_out}" if config.held_out else "") +
                         " mix strings and chat messages; use one form for every prompt")
    train = tokenize_prompts(records, tokenizer, config.max_prompt_length)
    test = tokenize_prompts(held, tokenizer, config.max_prompt_length)
    warmup_examples = []
    if config.warmup_steps:
        missing = [r.where for r in records if not isinstance(r.get("completion"), str)]
        if missing:
            raise ValueError(f"warmup_steps={config.warmup_steps} trains on prompt -> completion, and {missing[0]} has "
                             "no string 'completion'; add a completion column or set warmup_steps=0")
        if config.warmup_target is not None and not all("answer" in r for r in records + held):
            raise ValueError("warmup_target stops the warm-up at a held-out exact match, which needs an 'answer' column "
                             "in every prompt; set warmup_target=null (the warm-up then runs warmup_steps)")
        warmup_examples = tokenize_records([{"prompt": r["prompt"], "completion": r["completion"]} for r in records],
                                           tokenizer, max_length=config.max_prompt_length + config.max_new_tokens,
                                           prompt_len=1)
    return train, test, warmup_examples


def reward_functions(config: RLConfig, columns: list[str]) -> dict:
    """Each reward of ``config.rewards`` imported and checked against TRL's signature and the
    prompt set's columns (``exact_match`` needs an ``answer`` column), before any training."""
    functions = {}
    for name in config.rewards:
        if name == "exact_match" and "answer" not in columns:
            where = "the built-in task" if config.data == "builtin" else config.data
            raise ValueError(f"rewards: exact_match compares completions with the 'answer' column, which {where} does "
                             "not have (its columns: " + (", ".join(columns) or "none besides prompt") + "); give your "
                             "own reward functions, e.g. rewards={mymodule.my_reward: 1.0}")
        functions[name] = reward_function(name)
        check_reward_signature(name, functions[name], columns)
    return functions


def check_batches(config: RLConfig, processes: int, train_size: int) -> None:
    """The batch sizes split over processes and accumulation micro-batches."""
    if config.prompts_per_step > train_size or config.prompts_per_step % processes:
        raise ValueError(f"prompts_per_step={config.prompts_per_step} must be <= the {train_size} training prompts and "
                         f"divisible by the {processes} process(es)")
    local = config.prompts_per_step // processes * config.group_size
    if local % config.grad_accum:
        raise ValueError(f"each process's {local} completions per step must split into grad_accum={config.grad_accum} "
                         "equal micro-batches")
    if config.warmup_steps and config.warmup_batch_size % (processes * config.grad_accum):
        raise ValueError(f"warmup_batch_size={config.warmup_batch_size} must be divisible by processes x grad_accum")


def run_seed(config: RLConfig, trainer: RLTrainer, tokenizer, seed: int) -> dict:
    """Warm-up then GRPO for one seed; returns both runs' final checkpoints."""
    checkpoints = os.path.join(config.output_dir, "checkpoints")

    build = functools.partial(build_policy, config.policy, tokenizer, seed, config)

    policy = build(lora=False)  # a warm-up trains the full model
    if config.warmup_steps:
        state = trainer.warmup(policy, seed, os.path.join(checkpoints, f"warmup-seed{seed}.pt"))["model"]
        load_weights(policy, state)  # (sharded by FSDP: into its shards)
    else:
        state = policy.state_dict()
    before = trainer.evaluate(policy)  # the starting model (after any warm-up), on the held-out prompts
    policy = build(state)
    reference, reference_accuracy = None, None
    if config.kl_coef > 0 or config.kl_target is not None or config.ctrl != "none":
        if config.reference is None and config.lora is not None:  # the policy with its adapters off: no copy
            reference = AdaptersOff(policy)
        elif config.reference is None:  # a frozen copy of the warm-up model
            reference = frozen(build(state, lora=False), config, trainer.accelerator)
        else:  # another model (KDRL: a teacher), trained by the same warm-up first when asked
            reference = CausalLM(build_causal_lm(config.reference, tokenizer, seed + 1000), len(tokenizer))
            if config.reference_warmup_steps:
                trained = trainer.warmup(reference, seed, os.path.join(checkpoints, f"reference-warmup-seed{seed}.pt"),
                                         steps=config.reference_warmup_steps, name="reference-warmup")
                load_weights(reference, trained["model"])
                reference_accuracy = trained["metrics"]["test_accuracy"]
            reference = frozen(reference, config, trainer.accelerator)
    del state  # the warm-up weights live on in the policy and the reference: no third copy during training
    with exported(trainer.accelerator, policy, tokenizer, config.output_dir, f"grpo-seed{seed}"):
        result = trainer.grpo(policy, reference, seed, os.path.join(checkpoints, f"grpo-seed{seed}.pt"))
    after = result["metrics"]
    summary = {"warmup_eval_reward": before["eval_reward"], "rl_eval_reward": after["eval_reward"]}
    if "test_accuracy" in after:
        summary |= {"warmup_accuracy": before["test_accuracy"], "rl_accuracy": after["test_accuracy"]}
    return {**summary, **({"reference_accuracy": reference_accuracy} if reference_accuracy is not None else {}),
            "history": result["state"]["history"], "steps": result["state"]["steps"]}


REPORTED = (("accuracy", "held-out exact match"), ("eval_reward", "held-out reward"))


def report(config: RLConfig, results: dict[int, dict]) -> dict:
    """metrics.json, the table (per seed: the starting model and the trained policy on the held-out
    prompts: exact match when there are answers, and the combined reward) and the curves."""
    first = next(iter(results.values()))
    reported = [(key, label) for key, label in REPORTED if f"warmup_{key}" in first]
    summary = {"seeds": {str(seed): {key: r[key] for key in r if key not in ("history", "steps")}
                         for seed, r in results.items()}}
    for key, _ in reported:
        for stage in ("warmup", "rl"):
            summary[f"{stage}_{key}"] = mean_std([r[f"{stage}_{key}"] for r in results.values()])
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    start = "warm-up" if config.warmup_steps else "start"
    columns = ["seed"] + [f"{label}: {stage}" for _, label in reported for stage in (start, "after RL")]
    rows = [{"seed": str(seed), **{f"{label}: {stage}": r[f"{key_stage}_{key}"] for key, label in reported
                                   for stage, key_stage in ((start, "warmup"), ("after RL", "rl"))}}
            for seed, r in results.items()]
    rows.append({"seed": "mean +- std", **{f"{label}: {stage}": "{mean:.3f} +- {std:.3f}".format(**summary[f"{key_stage}_{key}"])
                                           for key, label in reported
                                           for stage, key_stage in ((start, "warmup"), ("after RL", "rl"))}})
    print(format_table(rows, columns))
    held = "test_accuracy" if "warmup_accuracy" in first else "eval_reward"
    curves = {}
    for seed, r in results.items():  # per step: reward, KL (estimate and exact), entropy; per evaluation: held-out
        steps = [s["step"] for s in r["steps"]]
        curves[f"seed {seed}"] = {key: (steps, [s[key] for s in r["steps"]])
                                  for key in ("reward", "kl_estimate", "kl_exact", "entropy")
                                  if r["steps"] and all(key in s for s in r["steps"])}
        start_value = r["warmup_accuracy" if held == "test_accuracy" else "warmup_eval_reward"]
        curves[f"seed {seed}"][held] = ([0] + [h["step"] for h in r["history"]],
                                        [start_value] + [h[held] for h in r["history"]])
    task = (f"{config.digits}-digit '{config.operations}'" if config.data == "builtin" else config.data)
    training_curves(curves, os.path.join(config.output_dir, "curves.png"), x_key="step",
                    title=f"GRPO on {task}, per step: task reward, KL(pi || ref) per token ({config.kl_estimator} "
                          f"estimate and exact), entropy; {held} = greedy completions of the held-out prompts (step 0: "
                          "the starting model)")
    return summary


def run(config: RLConfig) -> dict:
    return run_recipe(RLRecipe, config)
