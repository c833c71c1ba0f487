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

import json
import os
import time
from typing import Optional

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..._table import format_table
from ...data import (arithmetic_problems, builtin_corpus, char_tokenizer, load_text_examples, task_records,
                     tokenize_records, train_bpe_tokenizer)
from ...metrics import training_curves
from ...models import CausalLM, ModelSource, build_causal_lm, load_tokenizer, model_tokenizer, weights_fingerprint
from ...targets import TeacherCache
from ...training import prepare_run_folder
from .config import DistillLMConfig, LMMethod
from .objectives import ce_loss, check_cache, make_student_loss
from .trainer import LMRun, LMTrainer

__all__ = ["DistillLMConfig", "LMMethod", "run"]


def setup(config: DistillLMConfig):
    """Accelerator, tokenizer (trained or loaded), examples and output folders."""
    accelerator = Accelerator(cpu=config.cpu or not torch.cuda.is_available())
    problems = None  # data=arithmetic: the held-out problems, for the generation exact match
    if config.data == "arithmetic":
        tokenizer = char_tokenizer() if config.tokenizer == "builtin" else load_tokenizer(config.tokenizer)
        train_problems, problems = arithmetic_problems(config.task_train_size, config.task_test_size,
                                                       digits=config.task_digits, operations=config.task_operations,
                                                       seed=config.seed)
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
    teacher = build_teacher(config, tokenizer)
    _, log_path = prepare_run_folder(accelerator, config.output_dir, config.resume, config, config.overwrite)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(os.path.join(config.output_dir, "tokenizer"))
    return accelerator, tokenizer, train, held_out, teacher, LMTrainer(accelerator, config, tokenizer, train,
                                                                       held_out, log_path, problems)


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
    if recorded is None or "teacher_sha256" not in manifest:  # written by an older divreg: nothing to check it by
        raise ValueError(f"teacher_cache {config.teacher_cache!r} does not record which teacher wrote it (an older "
                         "divreg wrote it); pass teacher.path=<that teacher> to report the KL to it, kl_eval=false, or "
                         "write the cache again")
    if os.path.isabs(recorded) and not os.path.isdir(recorded):  # a folder then; a hub id is loaded as one
        raise ValueError(f"teacher_cache {config.teacher_cache!r} was written by the teacher {recorded!r}, which is not "
                         "a folder here; pass teacher.path=<that teacher> to report the KL to it, or kl_eval=false")
    return ModelSource(path=recorded, config={}, tokenizer=config.teacher.tokenizer)


def cached_teacher(config: DistillLMConfig, model: CausalLM) -> CausalLM:
    """``model`` if its weights are those of the teacher that wrote ``teacher_cache``, else a
    ``ValueError`` (the reported KL would be to another teacher than the one trained toward)."""
    recorded = TeacherCache(config.teacher_cache).manifest.get("teacher_sha256")
    if recorded is not None and weights_fingerprint(model.model) != recorded:
        raise ValueError(f"the teacher {model.model.name_or_path!r} is not the one that wrote teacher_cache "
                         f"{config.teacher_cache!r} (its weights differ from the recorded ones): the held-out KL would "
                         "be to another teacher; pass the cache's teacher as teacher.path, or kl_eval=false")
    return model


def build_teacher(config: DistillLMConfig, tokenizer):
    """The teacher model (loaded, or built to be trained here; with ``teacher_cache`` the cache's
    teacher for the held-out KL, or None without ``kl_eval``) and the tokenizer it reads (see
    :func:`divreg.models.model_tokenizer`)."""
    if config.teacher_cache:
        source = cached_teacher_source(config)
        if source is None:
            return None, model_tokenizer(config.teacher, tokenizer)
        teacher_tokenizer = model_tokenizer(source, tokenizer)
        model = CausalLM(build_causal_lm(source, teacher_tokenizer, config.seed), len(teacher_tokenizer))
        return cached_teacher(config, model), teacher_tokenizer
    teacher_tokenizer = model_tokenizer(config.teacher, tokenizer)
    if config.teacher.path is None and config.teacher_train_steps and teacher_tokenizer is not tokenizer:
        raise ValueError("a teacher trained here uses the run's tokenizer; give teacher.path for another one")
    return CausalLM(build_causal_lm(config.teacher, teacher_tokenizer, config.seed), len(teacher_tokenizer)), \
        teacher_tokenizer


def prepare_teacher(config: DistillLMConfig, model: Optional[CausalLM], trainer: LMTrainer, accelerator):
    """Train a teacher built here with CE (saved to ``output_dir/teacher``), then freeze it in
    ``teacher_dtype``, in place (the student losses built before hold this same module)."""
    if model is None:
        return None
    if config.teacher.path is None and config.teacher_train_steps and not config.teacher_cache:
        run = LMRun("teacher", None, config.teacher_train_steps, config.teacher_lr,
                    os.path.join(config.output_dir, "checkpoints", "teacher.pt"))
        trainer.run(run, model, ce_loss, None)
        if accelerator.is_main_process:
            model.model.save_pretrained(os.path.join(config.output_dir, "teacher"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.teacher_dtype]
    return model.eval().requires_grad_(False).to(accelerator.device, dtype)


def report(config: DistillLMConfig, teacher_metrics, results: dict) -> dict:
    summary = ({"teacher": teacher_metrics} if teacher_metrics else {}) | {n: s["metrics"] for n, s in results.items()}
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    columns = ["run", "perplexity", "kl_to_teacher"] + (["exact_match"] if config.data == "arithmetic" else [])
    print(format_table([{"run": name, "perplexity": m["perplexity"], "kl_to_teacher": m.get("kl_to_teacher", "-"),
                         "exact_match": m.get("exact_match", "-")} for name, m in summary.items()], columns))
    curves = {name: {key: [r[key] for r in s["state"]["history"]]  # keys every evaluation has
                     for key in ("step", "loss", "perplexity", "kl_to_teacher", "exact_match")
                     if all(key in r for r in s["state"]["history"])} for name, s in results.items()}
    training_curves(curves, os.path.join(config.output_dir, "curves.png"), x_key="step",
                    title=f"perplexity, KL: the first {config.eval_examples} held-out examples (the table and "
                          "metrics.json: all of them); loss: training mean since the last evaluation")
    return summary


def run(config: DistillLMConfig) -> dict:
    started = time.perf_counter()
    accelerator, tokenizer, train, held_out, (teacher, teacher_tokenizer), trainer = setup(config)
    # Everything the run needs is built and checked before any training: the teacher (in setup),
    # the student, and every method's loss.
    losses = {method.name: make_student_loss(config, method, teacher, teacher_tokenizer, tokenizer)
              for method in config.methods}

    def new_student() -> CausalLM:  # every method starts from the same initialization
        return CausalLM(build_causal_lm(config.student, tokenizer, config.seed + 1), len(tokenizer))

    student = new_student()
    teacher = prepare_teacher(config, teacher, trainer, accelerator)
    trainer.teacher_model = teacher
    teacher_metrics = None
    if teacher is not None and teacher_tokenizer is tokenizer:
        teacher_metrics = trainer.evaluate(teacher, None, held_out)
    results = {}
    for method in tqdm(config.methods, desc="students", disable=not accelerator.is_local_main_process):
        student = student or new_student()
        loss_fn, shared = losses[method.name]
        run_spec = LMRun(method.name, method, config.steps, config.lr,
                         os.path.join(config.output_dir, "checkpoints", f"{method.name}.pt"))
        eval_teacher = teacher if shared is not None and config.kl_eval else None
        results[method.name] = trainer.run(run_spec, student, loss_fn, eval_teacher)
        student = None
    summary = None
    if accelerator.is_main_process:
        summary = report(config, teacher_metrics, results)
        print(f"{len(config.methods)} students on {config.data} ({len(train)} train / {len(held_out)} held-out "
              f"examples), {accelerator.num_processes} process(es), in {time.perf_counter() - started:.0f} s; "
              f"outputs in {config.output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
