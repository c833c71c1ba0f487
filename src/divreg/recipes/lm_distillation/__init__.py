"""Language-model distillation: a teacher (live, cached, or with another tokenizer) into one
student per method (any divergence; off-policy, on-policy with GKD's lambda, or DistiLLM's
adaptive replay), evaluated for held-out perplexity and KL to the teacher.

``divreg distill-lm [config.yaml] [key=value ...]`` or ``run(DistillLMConfig())``; shaped
setup -> train -> report. Built-in default: a byte-level BPE tokenizer trained on Python's
documentation topics (``pydoc_data``), a tiny Llama teacher trained on them, then four
students (forward KL, reverse KL, JSD, on-policy JSD). Writes ``config.yaml``,
``metrics.json``, ``metrics.jsonl``, ``curves.png``, ``tokenizer/``, ``teacher/`` and
``checkpoints/`` to ``output_dir``; ``resume=true`` continues a killed run exactly.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..._table import format_table
from ...data import (arithmetic_problems, builtin_corpus, char_tokenizer, load_text_examples, task_records,
                     tokenize_records, train_bpe_tokenizer)
from ...metrics import training_curves
from ...models import (CausalLM, LogitEnsemble, ModelSource, build_causal_lm, load_ensemble, load_tokenizer,
                       model_tokenizer, save_model_folder, teacher_fingerprint)
from ...targets import TeacherCache
from ...training import is_fsdp, mean_std, prepare_run_folder, refuse_under_fsdp, run_recipe
from .._engine import autocast_bf16, check_trainable, trainable
from .._export import exported
from .config import DistillLMConfig, LMMethod
from .objectives import ce_loss, check_cache, make_student_loss
from .trainer import LMRun, LMTrainer

__all__ = ["DistillLMConfig", "DistillLMRecipe", "LMMethod", "run"]


def setup(config: DistillLMConfig, accelerator):
    """Tokenizer (trained or loaded), examples, the teacher (untrained if it is trained here) and
    output folders."""
    problems = None  # data=arithmetic: the held-out problems, for the generation exact match
    if config.data == "arithmetic":
        tokenizer = char_tokenizer() if config.tokenizer == "builtin" else load_tokenizer(config.tokenizer)
        train_problems, problems = arithmetic_problems(config.train_size, config.test_size, digits=config.digits,
                                                       operations=config.operations, seed=config.data_seed)
        train = tokenize_records(task_records(train_problems), tokenizer, config.seq_len, config.prompt_len)
        held_out = tokenize_records(task_records(problems), tokenizer, config.seq_len, config.prompt_len,
                                    first_id=len(train))
    else:
        if config.tokenizer == "builtin":
            if config.data != "builtin":
                raise ValueError("tokenizer=builtin is trained on the builtin corpus; give a tokenizer path for other "
                                 "data")
            tokenizer = train_bpe_tokenizer(builtin_corpus()[0], config.vocab_size)
        else:
            tokenizer = load_tokenizer(config.tokenizer)
        train, held_out = load_text_examples(config.data, config.held_out, tokenizer, config.seq_len,
                                             config.prompt_len)
    if config.teacher_cache:  # at start-up, not at the first batch
        check_cache(TeacherCache(config.teacher_cache), config, tokenizer, train)
    # the teacher (untrained if it is trained here) and the tokenizers' match, before the run folder is written
    check_trainable(config, config.student, tokenizer)  # before any training (e.g. a warm-up)
    teacher = build_teacher(config, tokenizer)
    _, log_path = prepare_run_folder(accelerator, config.output_dir, config.resume, config, config.overwrite)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(os.path.join(config.output_dir, "tokenizer"))
    return tokenizer, train, held_out, teacher, LMTrainer(accelerator, config, tokenizer, train, held_out, log_path,
                                                          problems)


def cached_teacher_source(config: DistillLMConfig) -> Optional[ModelSource]:
    """With ``teacher_cache``, the teacher the run evaluates against: ``teacher.path`` when given,
    else the one the cache recorded; None when there is none to evaluate (``kl_eval=false``).
    A teacher is never trained here then: the KL is only reported against the teacher that wrote
    the cache, checked by its weights (:func:`cached_teacher`)."""
    if not config.kl_eval:
        return None
    if config.teacher.path is not None:
        return config.teacher
    manifest = TeacherCache(config.teacher_cache).manifest
    recorded = manifest.get("teacher")
    if "teacher_server" in manifest and "teacher_sha256" not in manifest:
        raise ValueError(f"teacher_cache {config.teacher_cache!r} was written from the served teacher "
                         f"{manifest['teacher_server']} ({manifest.get('teacher_served_model')}), whose weights are not "
                         "here; pass teacher.path=<the folder it serves> to report the KL to it, or kl_eval=false")
    if recorded is None or "teacher_sha256" not in manifest:  # written by an older divreg: nothing to check it by
        raise ValueError(f"teacher_cache {config.teacher_cache!r} does not record which teacher wrote it (an older "
                         "divreg wrote it); pass teacher.path=<that teacher> to report the KL to it, kl_eval=false, or "
                         "write the cache again")
    if os.path.isabs(recorded) and not os.path.isdir(recorded):  # a folder then; a hub id is loaded as one
        raise ValueError(f"teacher_cache {config.teacher_cache!r} was written by the teacher {recorded!r}, which is not "
                         "a folder here; pass teacher.path=<that teacher> to report the KL to it, or kl_eval=false")
    return ModelSource(path=recorded, config={}, tokenizer=config.teacher.tokenizer)


def cached_ensemble(config: DistillLMConfig) -> tuple[list[str], str]:
    """With ``teacher_cache`` and ``kl_eval``: the ensemble to evaluate against, ``teacher.members``
    when given, else the members the cache recorded when an ensemble wrote it (and no
    ``teacher.path`` names another teacher); ``([], combine)`` otherwise."""
    if not config.kl_eval or config.teacher.path is not None:
        return [], config.teacher.combine
    if config.teacher.members:
        return config.teacher.members, config.teacher.combine
    manifest = TeacherCache(config.teacher_cache).manifest
    return manifest.get("teacher_members", []), manifest.get("teacher_combine", "logits")


def cached_teacher(config: DistillLMConfig, model: CausalLM) -> CausalLM:
    """``model`` if its weights are those of the teacher that wrote ``teacher_cache``, else a
    ``ValueError`` (the reported KL would be to another teacher than the one trained toward)."""
    recorded = TeacherCache(config.teacher_cache).manifest.get("teacher_sha256")
    if recorded is not None and teacher_fingerprint(model) != recorded:
        name = f"ensemble of {len(model.members)}" if isinstance(model, LogitEnsemble) else repr(model.model.name_or_path)
        raise ValueError(f"the teacher {name} is not the one that wrote teacher_cache "
                         f"{config.teacher_cache!r} (its weights differ from the recorded ones): the held-out KL would "
                         "be to another teacher; pass the cache's teacher as teacher.path, or kl_eval=false")
    return model


def build_teacher(config: DistillLMConfig, tokenizer):
    """The teacher model (loaded, or built to be trained here; with ``teacher_cache`` the cache's
    teacher for the held-out KL, or None without ``kl_eval``) and the tokenizer it reads (see
    :func:`divreg.models.model_tokenizer`)."""
    if config.teacher_cache:
        members, combine = cached_ensemble(config)
        if members:
            return cached_teacher(config, load_ensemble(members, tokenizer, combine)), tokenizer
        source = cached_teacher_source(config)
        if source is None:
            return None, model_tokenizer(config.teacher, tokenizer)
        teacher_tokenizer = model_tokenizer(source, tokenizer)
        model = CausalLM(build_causal_lm(source, teacher_tokenizer, config.data_seed), len(teacher_tokenizer))
        return cached_teacher(config, model), teacher_tokenizer
    if config.teacher.members:  # an ensemble of trained models over the run's tokenizer, never trained here
        return load_ensemble(config.teacher.members, tokenizer, config.teacher.combine), tokenizer
    if config.teacher.server:  # served: the run's tokenizer (the server's is checked against it); a local copy by
        # teacher.path only for the held-out KL (kl_eval), never trained here
        model = None if config.teacher.path is None else CausalLM(
            build_causal_lm(config.teacher, tokenizer, config.data_seed), len(tokenizer))
        return model, tokenizer
    teacher_tokenizer = model_tokenizer(config.teacher, tokenizer)
    if config.teacher.path is None and config.teacher_train_steps and teacher_tokenizer is not tokenizer:
        raise ValueError("a teacher trained here uses the run's tokenizer; give teacher.path for another one")
    return CausalLM(build_causal_lm(config.teacher, teacher_tokenizer, config.data_seed), len(teacher_tokenizer)), \
        teacher_tokenizer


def prepare_teacher(config: DistillLMConfig, model: Optional[CausalLM], trainer: LMTrainer, accelerator, tokenizer):
    """Train a teacher built here with CE (saved to ``output_dir/teacher``), then freeze it in
    ``teacher_dtype``, in place (the student losses built before hold this same module)."""
    if model is None:
        return None
    if config.teacher.path is None and config.teacher_train_steps and not config.teacher_cache \
            and not config.teacher.members:
        run = LMRun("teacher", None, config.teacher_train_steps, config.teacher_lr,
                    os.path.join(config.output_dir, "checkpoints", "teacher.pt"), config.data_seed,
                    config.teacher_weight_decay)
        if is_fsdp(accelerator):  # FSDP would shard the module the losses hold: train a copy, keep its weights
            model.load_state_dict(trainer.run(run, copy.deepcopy(model), ce_loss, None)["model"])
        else:
            trainer.run(run, model, ce_loss, None)
        if accelerator.is_main_process:  # a folder any tool loads, its tokenizer included (cache-teacher reads it)
            save_model_folder(model, tokenizer, os.path.join(config.output_dir, "teacher"),
                              checkpoint=os.path.join("checkpoints", "teacher.pt"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.teacher_dtype
                                                                                          or "float32"]
    model = model.eval().requires_grad_(False).to(accelerator.device, dtype)
    if config.teacher_dtype is None and config.precision == "bf16":  # the teacher follows the student's autocast
        autocast_bf16(model, accelerator)  # wraps its forward in place
    return model


def report(config: DistillLMConfig, teacher_metrics, results: dict[int, dict]) -> dict:
    """metrics.json, the table and curves.png. One seed: each run's metrics; several: their mean
    and sample standard deviation over the seeds (the curves: the first seed's)."""
    by_name = {name: [r[name]["metrics"] for r in results.values()] for name in next(iter(results.values()))}
    keys = ("perplexity", "kl_to_teacher", "exact_match")
    if len(results) == 1:
        students = {name: runs[0] for name, runs in by_name.items()}
        cells = {name: {key: m.get(key, "-") for key in keys} for name, m in students.items()}
    else:  # every metric's mean and sample std over the seeds, and each seed's own metrics
        students = {name: {key: mean_std([m[key] for m in runs]) for key in runs[0]} for name, runs in by_name.items()}
        cells = {name: {key: f"{v[key]['mean']:.4f} +- {v[key]['std']:.4f}" if key in v else "-" for key in keys}
                 for name, v in students.items()}
    summary = ({"teacher": teacher_metrics} if teacher_metrics else {}) | students
    if len(results) > 1:
        summary["seeds"] = {str(seed): {name: r[name]["metrics"] for name in r} for seed, r in results.items()}
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    rows = ([{"run": "teacher", **{key: teacher_metrics.get(key, "-") for key in keys}}] if teacher_metrics else []) + [
        {"run": name, **values} for name, values in cells.items()]
    print(format_table(rows, ["run", "perplexity", "kl_to_teacher"] + (["exact_match"] if config.data == "arithmetic"
                                                                        else [])))
    first = next(iter(results.values()))
    curves = {name: {key: [r[key] for r in s["state"]["history"]]  # keys every evaluation has
                     for key in ("step", "loss", "perplexity", "kl_to_teacher", "exact_match")
                     if all(key in r for r in s["state"]["history"])} for name, s in first.items()}
    training_curves(curves, os.path.join(config.output_dir, "curves.png"), x_key="step",
                    title=f"perplexity, KL: the first {config.eval_examples} held-out examples (the table and "
                          "metrics.json: all of them); loss: training mean since the last evaluation")
    return summary


class DistillLMRecipe:
    """``divreg distill-lm`` for :func:`divreg.training.run_recipe`: setup (data, the teacher,
    trained here when asked, and every method's loss), per seed one student per method, report."""

    def __init__(self, config: DistillLMConfig, accelerator):
        self.config, self.accelerator = config, accelerator

    def setup(self) -> None:
        config, accelerator = self.config, self.accelerator
        if config.generation.server:
            refuse_under_fsdp(accelerator, "generation.server (the main process writes the whole model for each sync)",
                              "run it with DDP (accelerate launch --multi_gpu) or one process")
        self.tokenizer, self.train, self.held_out, (teacher, teacher_tokenizer), trainer = setup(config, accelerator)
        # Everything the run needs is built and checked before any training: the teacher (in setup),
        # a student, and every method's loss.
        self.losses = {method.name: make_student_loss(config, method, teacher, teacher_tokenizer, self.tokenizer)
                       for method in config.methods}
        self.new_student(config.seeds[0])
        self.teacher = prepare_teacher(config, teacher, trainer, accelerator, self.tokenizer)
        trainer.teacher_model = self.teacher
        self.teacher_metrics = None
        if self.teacher is not None and teacher_tokenizer is self.tokenizer:
            self.teacher_metrics = trainer.evaluate(self.teacher, None, self.held_out)
        self.trainer = trainer

    def new_student(self, seed: int) -> CausalLM:  # every method of a seed starts from the same initialization
        return trainable(CausalLM(build_causal_lm(self.config.student, self.tokenizer, seed + 1), len(self.tokenizer)),
                         self.config, seed=seed + 1)

    def run_seed(self, seed: int) -> dict:
        config, results = self.config, {}
        for method in tqdm(config.methods, desc="students", disable=not self.accelerator.is_local_main_process):
            loss_fn, shared = self.losses[method.name]
            name = method.name if len(config.seeds) == 1 else f"{method.name}-seed{seed}"
            run_spec = LMRun(name, method, config.steps, config.lr,
                             os.path.join(config.output_dir, "checkpoints", f"{name}.pt"), seed, config.weight_decay)
            eval_teacher = self.teacher if shared is not None and config.kl_eval else None
            student = self.new_student(seed)
            with exported(self.accelerator, student, self.tokenizer, config.output_dir, name):
                results[method.name] = self.trainer.run(run_spec, student, loss_fn, eval_teacher)
        return results

    def report(self, results: dict[int, dict]) -> dict:
        return report(self.config, self.teacher_metrics, results)

    def describe(self) -> str:
        config = self.config
        return (f"{len(config.methods)} students x {len(config.seeds)} seed(s) on {config.data} ({len(self.train)} "
                f"train / {len(self.held_out)} held-out examples)")


def run(config: DistillLMConfig) -> dict:
    return run_recipe(DistillLMRecipe, config)
