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

import json
import os

from ..._table import format_table
from ...data import arithmetic_problems, char_tokenizer, task_records, tokenize_records
from ...metrics import training_curves
from ...models import CausalLM, build_causal_lm, load_tokenizer, model_tokenizer
from ...training import mean_std, prepare_run_folder, run_recipe
from .config import RLConfig
from .trainer import RLTrainer

__all__ = ["RLConfig", "RLRecipe", "run"]


class RLRecipe:
    """``divreg rl`` for :func:`divreg.training.run_recipe`: setup, per seed warm-up then GRPO, report."""

    def __init__(self, config: RLConfig, accelerator):
        self.config, self.accelerator = config, accelerator

    def setup(self) -> None:
        """The tokenizer, the task's problems, the run folder and the trainer (every check first)."""
        config, accelerator = self.config, self.accelerator
        tokenizer = char_tokenizer() if config.tokenizer == "builtin" else load_tokenizer(config.tokenizer)
        if config.reference is not None and model_tokenizer(config.reference, tokenizer) is not tokenizer:
            raise ValueError(f"reference.path {config.reference.path!r} ships its own tokenizer, which differs from the "
                             f"run's ({config.tokenizer!r}); a KL between the two models needs one vocabulary (a "
                             "teacher with another tokenizer is not supported here)")
        if model_tokenizer(config.policy, tokenizer) is not tokenizer:
            raise ValueError(f"policy.path {config.policy.path!r} ships its own tokenizer, which differs from tokenizer="
                             f"{config.tokenizer!r}; the policy, its reference and the rewards must read one tokenizer: "
                             "pass the policy's (tokenizer=<policy.path>)")
        self.train, self.test = arithmetic_problems(config.train_size, config.test_size, digits=config.digits,
                                                    operations=config.operations, seed=config.data_seed)
        check_batches(config, accelerator.num_processes, len(self.train))
        warmup_examples = tokenize_records(task_records(self.train), tokenizer, max_length=64, prompt_len=1)
        _, log_path = prepare_run_folder(accelerator, config.output_dir, config.resume, config, config.overwrite)
        self.tokenizer = tokenizer
        self.trainer = RLTrainer(accelerator, config, tokenizer, self.train, self.test, warmup_examples, log_path)

    def run_seed(self, seed: int) -> dict:
        return run_seed(self.config, self.trainer, self.tokenizer, seed)

    def report(self, results: dict[int, dict]) -> dict:
        return report(self.config, results)

    def describe(self) -> str:
        return (f"{len(self.config.seeds)} seed(s), {self.config.steps} GRPO steps each, on {len(self.train)} train / "
                f"{len(self.test)} test problems")


def check_batches(config: RLConfig, processes: int, train_size: int) -> None:
    """The batch sizes split over processes and accumulation micro-batches."""
    if config.prompts_per_step > train_size or config.prompts_per_step % processes:
        raise ValueError(f"prompts_per_step={config.prompts_per_step} must be <= train_size={train_size} and divisible "
                         f"by the {processes} process(es)")
    local = config.prompts_per_step // processes * config.group_size
    if local % config.grad_accum:
        raise ValueError(f"each process's {local} completions per step must split into grad_accum={config.grad_accum} "
                         "equal micro-batches")
    if config.warmup_steps and config.warmup_batch_size % (processes * config.grad_accum):
        raise ValueError(f"warmup_batch_size={config.warmup_batch_size} must be divisible by processes x grad_accum")


def run_seed(config: RLConfig, trainer: RLTrainer, tokenizer, seed: int) -> dict:
    """Warm-up then GRPO for one seed; returns both runs' final checkpoints."""
    checkpoints = os.path.join(config.output_dir, "checkpoints")

    def build() -> CausalLM:
        return CausalLM(build_causal_lm(config.policy, tokenizer, seed), len(tokenizer))

    policy = build()
    warmup = None
    if config.warmup_steps:
        warmup = trainer.warmup(policy, seed, os.path.join(checkpoints, f"warmup-seed{seed}.pt"))
        state = warmup["model"]
    else:
        state = policy.state_dict()
    warmup_accuracy = warmup["metrics"]["test_accuracy"] if warmup else trainer.accuracy(policy)
    policy = build()
    policy.load_state_dict(state)
    reference, reference_accuracy = None, None
    if config.kl_coef > 0 or config.kl_target is not None or config.ctrl != "none":
        if config.reference is None:  # a frozen copy of the warm-up model
            reference = build()
            reference.load_state_dict(state)
        else:  # another model (KDRL: a teacher), trained by the same warm-up first when asked
            reference = CausalLM(build_causal_lm(config.reference, tokenizer, seed + 1000), len(tokenizer))
            if config.reference_warmup_steps:
                trained = trainer.warmup(reference, seed, os.path.join(checkpoints, f"reference-warmup-seed{seed}.pt"),
                                         steps=config.reference_warmup_steps, name="reference-warmup")
                reference.load_state_dict(trained["model"])
                reference_accuracy = trained["metrics"]["test_accuracy"]
        reference = reference.eval().requires_grad_(False).to(trainer.accelerator.device)
    result = trainer.grpo(policy, reference, seed, os.path.join(checkpoints, f"grpo-seed{seed}.pt"))
    return {"warmup_accuracy": warmup_accuracy, "rl_accuracy": result["metrics"]["test_accuracy"],
            **({"reference_accuracy": reference_accuracy} if reference_accuracy is not None else {}),
            "history": result["state"]["history"], "steps": result["state"]["steps"]}


def report(config: RLConfig, results: dict[int, dict]) -> dict:
    warmup = mean_std([r["warmup_accuracy"] for r in results.values()])
    rl = mean_std([r["rl_accuracy"] for r in results.values()])
    summary = {"seeds": {str(seed): {key: r[key] for key in ("warmup_accuracy", "rl_accuracy", "reference_accuracy")
                                     if key in r} for seed, r in results.items()},
               "warmup_accuracy": warmup, "rl_accuracy": rl}
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    rows = [{"seed": str(seed), "warm-up accuracy": r["warmup_accuracy"], "after RL": r["rl_accuracy"]}
            for seed, r in results.items()]
    rows.append({"seed": "mean +- std", "warm-up accuracy": f"{warmup['mean']:.3f} +- {warmup['std']:.3f}",
                 "after RL": f"{rl['mean']:.3f} +- {rl['std']:.3f}"})
    print(format_table(rows, ["seed", "warm-up accuracy", "after RL"]))
    curves = {}
    for seed, r in results.items():  # per step: reward, KL (estimate and exact), entropy; per evaluation: accuracy
        steps = [s["step"] for s in r["steps"]]
        curves[f"seed {seed}"] = {key: (steps, [s[key] for s in r["steps"]])
                                  for key in ("reward", "kl_estimate", "kl_exact", "entropy")
                                  if r["steps"] and all(key in s for s in r["steps"])}
        curves[f"seed {seed}"]["test_accuracy"] = ([0] + [h["step"] for h in r["history"]],
                                                   [r["warmup_accuracy"]] + [h["test_accuracy"] for h in r["history"]])
    training_curves(curves, os.path.join(config.output_dir, "curves.png"), x_key="step",
                    title=f"GRPO on {config.digits}-digit '{config.operations}', per step: task reward, KL(pi || ref) "
                          f"per token ({config.kl_estimator} estimate and exact), entropy; test accuracy = greedy "
                          f"exact match on {config.test_size} held-out problems (step 0: the warm-up model)")
    return summary


def run(config: RLConfig) -> dict:
    return run_recipe(RLRecipe, config)
