"""Preference optimization of a language model (``divreg preference``): per seed, a supervised
warm-up, then each method from its weights on the same pairs: DPO and its family
(:class:`divreg.losses.PreferenceLoss`: any weighted mix of sigmoid / robust / hinge / IPO /
length-normalized losses, f-divergence links, an SFT term) and HyPO, which adds the KL to the
reference estimated on fresh samples of the current policy (:func:`divreg.losses.hypo_kl_surrogate`).

setup -> (per seed) warm-up -> pairs -> reference log-probs -> each method -> report.
Built-in default: the arithmetic task of ``divreg rl`` (character tokenizer, tiny Llama built from a
config; nothing downloaded): chosen = the right answer, rejected = a wrong completion of the warm-up
model. ``data=<pairs.jsonl or datasets folder>`` trains on your pairs (prompt/chosen/rejected, as
strings or chat messages) with ``policy.path`` / ``tokenizer`` your model. Outputs in
``output_dir``: ``config.yaml``, ``metrics.json``, ``metrics.jsonl`` (one record per step: the loss
parts, reward accuracy, margin, chosen/rejected log-ratios, HyPO's KL estimate; one per evaluation:
held-out exact match, held-out reward accuracy and margin, the sequence KL to the reference),
``pairs-seed*.jsonl`` (the built-in pairs), ``curves.png`` and ``checkpoints/``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

from ..._table import format_table
from ...data import (arithmetic_problems, char_tokenizer, load_preference_records, task_records, tokenize_pairs,
                     tokenize_records)
from ...metrics import training_curves
from ...models import AdaptersOff, CausalLM, load_tokenizer, model_tokenizer
from ...training import load_weights, mean_std, prepare_run_folder, refuse_under_fsdp, run_recipe
from .._engine import build_policy, check_trainable, frozen
from .._export import exported
from .._warmup import supervised_warmup
from .config import PreferenceConfig
from .trainer import (EXACT_KL_LIMIT, PreferenceTrainer, exact_kl_fits, prompt_of, sequence_logprobs,
                      task_pairs)

__all__ = ["PreferenceConfig", "PreferenceRecipe", "run"]


def _user_pairs(config: PreferenceConfig, tokenizer):
    train = tokenize_pairs(load_preference_records(config.data), tokenizer, config.max_length)
    if config.held_out is not None:
        return train, tokenize_pairs(load_preference_records(config.held_out), tokenizer, config.max_length,
                                     first_id=len(train))
    if len(train) < 2:
        raise ValueError(f"data {config.data!r} holds {len(train)} pair; give at least 2 (a tenth is held out) or "
                         "held_out=<file>")
    cut = max(1, len(train) // 10)
    return train[cut:], train[:cut]


class PreferenceRecipe:
    """``divreg preference`` for :func:`divreg.training.run_recipe`: setup, per seed the warm-up
    and each method, report."""

    def __init__(self, config: PreferenceConfig, accelerator):
        self.config, self.accelerator = config, accelerator

    def setup(self) -> None:
        if self.config.generation.server:
            refuse_under_fsdp(self.accelerator, "generation.server (the main process writes the whole model for each "
                              "sync)", "run it with DDP (accelerate launch --multi_gpu) or one process")
        if self.config.kl_eval == "exact":
            refuse_under_fsdp(self.accelerator, "kl_eval=exact (the enumeration drives the policy's own KV cache)",
                              "use kl_eval=sampled (or auto, which samples under FSDP)")
        self.tokenizer, self.data, self.trainer = setup(self.config, self.accelerator)

    def run_seed(self, seed: int) -> dict:
        return run_seed(self.config, self.trainer, self.tokenizer, self.data, seed)

    def report(self, results: dict[int, dict]) -> dict:
        return report(self.config, results)

    def describe(self) -> str:
        config = self.config
        return (f"{len(config.seeds)} seed(s), methods {config.methods}, {config.steps} steps of {config.batch_size} "
                "pairs each")


def _check_batches(config: PreferenceConfig, processes: int) -> None:
    if config.batch_size % (processes * config.grad_accum):
        raise ValueError(f"batch_size={config.batch_size} pairs must split evenly over {processes} "
                         f"process(es) x grad_accum={config.grad_accum}")
    if config.warmup_steps and config.warmup_batch_size % (processes * config.grad_accum):
        raise ValueError(f"warmup_batch_size={config.warmup_batch_size} must be divisible by processes x grad_accum")


def setup(config: PreferenceConfig, accelerator):
    """Tokenizer, data (task problems or pairs), the run folder and the trainer; every check
    before any training."""
    tokenizer = char_tokenizer() if config.tokenizer == "builtin" else load_tokenizer(config.tokenizer)
    if model_tokenizer(config.policy, tokenizer) is not tokenizer:
        raise ValueError(f"policy.path {config.policy.path!r} ships its own tokenizer, which differs from tokenizer="
                         f"{config.tokenizer!r}: pass the policy's (tokenizer=<policy.path>)")
    _check_batches(config, accelerator.num_processes)
    if config.data == "builtin":
        train, test = arithmetic_problems(config.train_size, config.test_size, digits=config.digits,
                                          operations=config.operations, seed=config.data_seed)
        data = {"problems": (train, test),
                "warmup": tokenize_records(task_records(train), tokenizer, max_length=64, prompt_len=1)}
        size = len(train)
    else:
        pairs = _user_pairs(config, tokenizer)
        data = {"pairs": pairs, "warmup": [p.chosen for p in pairs[0]]}
        size = len(pairs[0])
        longest = max(len(p.chosen.input_ids) - p.chosen.prompt_length for p in pairs[0])
        if config.max_new_tokens is None:  # resolved here, so the saved config says which
            config.max_new_tokens = longest
        if config.max_new_tokens < longest and ("hypo" in config.methods or config.kl_eval != "none"):
            raise ValueError(f"max_new_tokens={config.max_new_tokens} is shorter than the longest chosen answer "
                             f"({longest} tokens with its EOS): HyPO's samples and the KL evaluation would only cover "
                             f"prefixes; set max_new_tokens={longest} (or more)")
    if config.kl_eval == "exact" and not exact_kl_fits(len(tokenizer), config):
        raise ValueError(f"kl_eval=exact would enumerate {len(tokenizer) - 1}^{config.max_new_tokens - 1} completions per "
                         f"prompt (more than {EXACT_KL_LIMIT}): use kl_eval=sampled (or auto)")
    if config.warmup_steps and config.warmup_batch_size > len(data["warmup"]):
        raise ValueError(f"warmup_batch_size={config.warmup_batch_size} exceeds the {len(data['warmup'])} warm-up "
                         "examples; lower warmup_batch_size")
    if config.batch_size > size:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {size} training pairs")
    check_trainable(config, config.policy, tokenizer)  # before any training (e.g. a warm-up)
    _, log_path = prepare_run_folder(accelerator, config.output_dir, config.resume, config, config.overwrite)
    return tokenizer, data, PreferenceTrainer(accelerator, config, tokenizer, log_path)


def _warmup_metric(config: PreferenceConfig, trainer: PreferenceTrainer, tokenizer, data: dict):
    """(metric name, metric of a model) the warm-up is evaluated by: the built-in task's held-out
    exact match, or a data file's held-out chosen answers' mean sequence log-prob."""
    if "problems" in data:
        test_problems = data["problems"][1]
        test_prompts = [tokenizer(p.prompt)["input_ids"] for p in test_problems]
        return "test_accuracy", lambda model: trainer.accuracy(model, test_prompts, test_problems)
    held_chosen = [p.chosen for p in data["pairs"][1]]
    return "held_out_chosen_logprob", lambda model: float(sequence_logprobs(
        trainer.accelerator.unwrap_model(model), held_chosen, tokenizer.pad_token_id, trainer.signal).mean())


def _pairs(config: PreferenceConfig, trainer: PreferenceTrainer, policy, tokenizer, data: dict, seed: int,
           outcome: dict) -> tuple[list, list]:
    """(train, held-out) pairs: a data file's, or built from the warm-up model's own wrong answers
    (written to ``pairs-seed<seed>.jsonl``; the fallbacks counted in ``outcome``)."""
    if "problems" not in data:
        return data["pairs"]
    train_problems, test_problems = data["problems"]
    train_pairs, records, fallbacks = task_pairs(policy, train_problems, tokenizer, config, seed, 0)
    held_out, held_records, held_fallbacks = task_pairs(policy, test_problems, tokenizer, config, seed, 1)
    outcome["fallback_rejected"] = fallbacks + held_fallbacks
    if trainer.accelerator.is_main_process:
        with open(os.path.join(config.output_dir, f"pairs-seed{seed}.jsonl"), "w") as handle:
            for split, rows in (("train", records), ("held_out", held_records)):
                for row in rows:
                    handle.write(json.dumps({"split": split, **row}) + "\n")
    return train_pairs, held_out


def _reference(config: PreferenceConfig, trainer: PreferenceTrainer, reference, train_pairs, held_out,
               seed: int) -> tuple[Optional[CausalLM], dict]:
    """The frozen reference (None when nothing reads it again) and its log-probs of the pairs."""
    tables = {"train": None, "held_out": None}
    if reference is None:
        return None, tables
    reference = frozen(reference, config, trainer.accelerator)
    splits = {"train": train_pairs, "held_out": held_out} if config.precompute_reference else {"held_out": held_out}
    tables.update(trainer.reference_logprobs(reference, splits, os.path.join(
        config.output_dir, "checkpoints",
        f"reference-logprobs-seed{seed}{'' if config.precompute_reference else '-held-out'}.pt")))
    if config.precompute_reference and "hypo" not in config.methods and config.kl_eval == "none":
        reference = None  # nothing reads the reference model again: free it
    return reference, tables


def run_seed(config: PreferenceConfig, trainer: PreferenceTrainer, tokenizer, data: dict, seed: int) -> dict:
    """The warm-up, the pairs, the reference's log-probs, then each method from the warm-up."""
    checkpoints = os.path.join(config.output_dir, "checkpoints")

    build = functools.partial(build_policy, config.policy, tokenizer, seed, config)

    metric, warmup_metric = _warmup_metric(config, trainer, tokenizer, data)
    policy = build(lora=False)  # a warm-up trains the full model
    state = policy.state_dict() if not config.warmup_steps else supervised_warmup(
        trainer.accelerator, policy, data["warmup"], tokenizer, name=f"warmup-seed{seed}", seed=seed,
        steps=config.warmup_steps, batch_size=config.warmup_batch_size, lr=config.warmup_lr,
        grad_accum=config.grad_accum, checkpoint_path=os.path.join(checkpoints, f"warmup-seed{seed}.pt"),
        checkpoint_every=config.checkpoint_every * 4, accuracy=warmup_metric, target=config.warmup_target,
        eval_every=config.warmup_eval_every, log_path=trainer.log_path, metric=metric)["model"]
    load_weights(policy, state)  # (sharded by FSDP: into its shards)
    policy.eval()
    outcome = {"warmup": {metric: warmup_metric(policy)}}
    train_pairs, held_out = _pairs(config, trainer, policy, tokenizer, data, seed, outcome)
    # the reference is the warm-up model: with lora, that model itself for the log-prob tables, then each method's
    # policy with its adapters off (one copy of the weights); without, a frozen copy, unless nothing reads the
    # reference after its tables (as TRL's precompute_ref_log_probs: the warm-up model scores them, no second copy)
    tables_only = config.precompute_reference and "hypo" not in config.methods and config.kl_eval == "none"
    reference, tables = _reference(config, trainer, (policy if config.lora is not None or tables_only
                                                     else build(state, lora=False))
                                   if config.reference == "warmup" else None, train_pairs, held_out, seed)
    current = {"reference": reference}
    kl_prompts = [list(p) for p in list({tuple(prompt_of(p)): None for p in held_out})[:config.kl_prompts]]
    test_set = _test_set(tokenizer, data) if "problems" in data else None

    def evaluate(model) -> dict:
        record = trainer.held_out_metrics(model, held_out, tables["held_out"])
        if test_set is not None:
            record["test_accuracy"] = trainer.accuracy(model, *test_set)
        if current["reference"] is not None and config.kl_eval != "none":
            record["kl"] = trainer.kl_to_reference(model, current["reference"], kl_prompts, seed)
        return record

    outcome["warmup"] |= evaluate(policy)  # its KL to itself: 0 (a check of the measurement)
    del policy
    for number, method in enumerate(config.methods):
        model = build(state)
        if number == len(config.methods) - 1:
            del state  # the last method's copy is the only one needed from here (no second copy while it trains)
        if config.lora is not None and current["reference"] is not None:
            current["reference"] = AdaptersOff(model)
        with exported(trainer.accelerator, model, tokenizer, config.output_dir, f"{method}-seed{seed}"):
            result = trainer.optimize(method, model, current["reference"], train_pairs, tables["train"], evaluate, seed,
                                      os.path.join(checkpoints, f"{method}-seed{seed}.pt"))
        outcome[method] = {**result["metrics"], "history": result["state"]["history"],
                           "steps": result["state"]["steps"]}
    return outcome


def _test_set(tokenizer, data: dict) -> tuple[list, list]:
    """(prompt ids, problems) of the built-in task's held-out problems."""
    test_problems = data["problems"][1]
    return [tokenizer(p.prompt)["input_ids"] for p in test_problems], test_problems


COLUMNS = (("test_accuracy", "held-out exact match"), ("held_out_reward_accuracy", "held-out reward accuracy"),
           ("kl", "KL(pi || ref) per prompt"), ("held_out_unseen_mass", "mass off the pair's answers"))


def report(config: PreferenceConfig, results: dict[int, dict]) -> dict:
    """metrics.json (per seed and mean +- std over seeds), the table and curves.png."""
    runs = ["warmup", *config.methods]
    keys = [key for key, _ in COLUMNS if key in next(iter(results.values()))["warmup"]]
    summary = {"seeds": {str(seed): {run: {key: r[run][key] for key in keys} for run in runs}
                         for seed, r in results.items()},
               "fallback_rejected": {str(seed): r.get("fallback_rejected", 0) for seed, r in results.items()}}
    rows = []
    for run_name in runs:
        row = {"run": run_name}
        for key, title in COLUMNS:
            if key in keys:
                spread = mean_std([r[run_name][key] for r in results.values()])
                summary.setdefault(run_name, {})[key] = spread
                row[title] = f"{spread['mean']:.3f} +- {spread['std']:.3f}"
        rows.append(row)
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(format_table(rows, ["run", *[title for key, title in COLUMNS if key in keys]]))
    curves = {}
    for seed, r in results.items():
        for method in config.methods:
            steps = r[method]["steps"]
            x = [s["step"] for s in steps]
            curve = {key: (x, [s[key] for s in steps]) for key in ("reward_accuracy", "margin", "hypo_kl_estimate")
                     if steps and all(key in s for s in steps)}
            history = r[method]["history"]
            for key in keys:
                curve[key] = ([0] + [h["step"] for h in history], [r["warmup"][key]] + [h[key] for h in history])
            curves[f"{method} seed {seed}"] = curve
    training_curves(curves, os.path.join(config.output_dir, "curves.png"), x_key="step",
                    title="preference optimization per step: train reward accuracy, margin, HyPO's sampled sequence "
                          "KL; per evaluation: held-out exact match, reward accuracy and KL(pi || ref) (step 0: the "
                          "warm-up model)")
    return summary


def run(config: PreferenceConfig) -> dict:
    return run_recipe(PreferenceRecipe, config)
