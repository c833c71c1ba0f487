"""One training run of the LM recipe (the teacher's CE pre-training or one student's
distillation) on the shared run loop of :mod:`divreg.training`: Accelerate for processes,
gradient accumulation with global token normalization, atomic checkpoints, exact resume (all
randomness is a function of the seed and the step)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from ...data import IGNORE_INDEX, TaskProblem, TextExample, collate, exact_match_reward
from ...divergences import forward_kl
from ...targets import TeacherCache, truncation_report
from ...models import CausalLM, greedy_completions
from ...training import RunSpec, adamw, backward_micro_batches, check_batch_size, train_run
from .config import DistillLMConfig, LMMethod
from .sources import AdaptiveOffPolicy, StepSource


@dataclass
class LMRun:
    name: str
    method: Optional[LMMethod]  # None: plain CE training (the teacher)
    steps: int
    lr: float
    checkpoint_path: str
    seed: int  # the run's data order and samples (and, for a student, its initialization: seed + 1)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the matrices (divreg.training.adamw)


@torch.no_grad()
def evaluate(student: CausalLM, teacher: Optional[CausalLM], examples: list[TextExample], pad_token_id: int,
             batch_size: int = 16, top_k: Optional[int] = None, top_k_positions: int = 512) -> dict[str, float]:
    """Held-out perplexity of the student and its mean per-token KL(teacher || student) (both
    over the tokenizer's tokens, see :class:`divreg.models.CausalLM`). With ``top_k`` (the run
    trains on a cached or served top-k teacher) and a teacher: what the truncation costs at the
    student's current state, on the first ``top_k_positions`` held-out positions
    (:func:`divreg.targets.truncation_report`: ``topk_gap``, ``topk_relative_gap``,
    ``topk_grad_cosine``, ``topk_tail_mass``)."""
    was_training = student.training
    student.eval()
    nll_sum, kl_sum, tokens = 0.0, 0.0, 0
    sampled: list[tuple[torch.Tensor, torch.Tensor]] = []  # (student, teacher) logits of positions, for top_k
    device = next(student.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_token_id).items()}
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        logits = student(batch["input_ids"], batch["attention_mask"])[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        nll_sum, tokens = nll_sum + float(nll), tokens + int(mask.sum())
        if teacher is not None:
            teacher_logits = teacher(batch["input_ids"], batch["attention_mask"])[:, :-1].float()
            kl_sum += float(forward_kl(logits, teacher_logits)[mask].sum())
            if top_k is not None and sum(len(a) for a, _ in sampled) < top_k_positions:
                sampled.append((logits[mask], teacher_logits[mask]))
    student.train(was_training)
    result = {"perplexity": math.exp(nll_sum / tokens), "nll": nll_sum / tokens}
    if teacher is not None:
        result["kl_to_teacher"] = kl_sum / tokens
    if sampled:
        report = truncation_report(torch.cat([a for a, _ in sampled])[:top_k_positions],
                                   torch.cat([b for _, b in sampled])[:top_k_positions], top_k)
        result |= {"topk_gap": report["gap"], "topk_relative_gap": report["relative_gap"],
                   "topk_grad_cosine": report["cosine_mean"], "topk_tail_mass": report["tail_mass_mean"]}
    return result


class LMTrainer:
    """Trains runs one after another; ``loss_fn(model, micro_batch, num_items) -> (loss, parts)``."""

    def __init__(self, accelerator: Accelerator, config: DistillLMConfig, tokenizer, train: list[TextExample],
                 held_out: list[TextExample], log_path: str, problems: Optional[list[TaskProblem]] = None):
        check_batch_size(config.batch_size, len(train), accelerator.num_processes, config.grad_accum)
        self.accelerator, self.config, self.tokenizer = accelerator, config, tokenizer
        self.teacher_model = None  # set by the recipe: generates the data of sequence-level KD
        # a cached or served top-k teacher's k: each evaluation also measures what the truncation costs
        self.top_k = (config.teacher.top_k if config.teacher.server else
                      TeacherCache(config.teacher_cache).top_k if config.teacher_cache else None)
        self.sampler = config.generation.sampler(tokenizer, config.output_dir, accelerator)  # the student's samples
        self.train, self.held_out, self.log_path = train, held_out, log_path
        self.eval_subset = held_out[: config.eval_examples]
        self.problems = problems  # a generated task's held-out problems: also the greedy answers' exact match
        # the held-out examples are the problems, in order: their prompts as the model was trained on them
        if problems is not None and len(problems) != len(held_out):
            raise ValueError(f"{len(problems) - len(held_out)} held-out problems do not fit seq_len={config.seq_len} "
                             "with this tokenizer; raise seq_len")
        self.problem_prompts = None if problems is None else [e.input_ids[:e.prompt_length] for e in held_out]

    def evaluate(self, model, teacher, examples=None) -> dict[str, float]:
        model = self.accelerator.unwrap_model(model)
        result = evaluate(model, teacher, examples or self.eval_subset, self.tokenizer.pad_token_id,
                          top_k=self.top_k if teacher is not None else None)
        if self.problems is not None:  # every held-out problem, greedy: how GKD and MiniLLM judge students
            texts = greedy_completions(model, self.problem_prompts, self.tokenizer, self.config.max_new_tokens)
            result["exact_match"] = sum(exact_match_reward(texts, [p.answer for p in self.problems])) / len(texts)
        return result

    def run(self, run: LMRun, model: CausalLM, loss_fn: Callable, teacher: Optional[CausalLM]) -> dict:
        """Train (or resume, or skip if done) one run; return its final checkpoint."""
        accelerator, config = self.accelerator, self.config
        replay = (AdaptiveOffPolicy(config.replay_capacity, config.replay_init, config.replay_loss_eps, run.steps)
                  if run.method is not None and run.method.adaptive_off_policy else None)
        served = self.sampler is not None and run.method is not None
        source = StepSource(config, run.method, self.train, self.tokenizer, self.teacher_model, replay, run.seed,
                            sampler=self.sampler if served else None,
                            sync=functools.partial(self.sampler.sync_from_main, accelerator) if served else None)

        def step_fn(model, optimizer, step: int) -> dict:
            examples, origin = source.examples(step, accelerator.unwrap_model(model), accelerator.process_index,
                                               accelerator.num_processes)
            micro = [collate(examples[i::config.grad_accum], self.tokenizer.pad_token_id)
                     for i in range(config.grad_accum)]
            micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
            totals = backward_micro_batches(accelerator, model, micro, loss_fn)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            synced, source.last_sync = source.last_sync, {}
            return {"source": origin, **totals, **synced}

        def evaluate_fn(model, step: int, means: dict) -> dict:
            record = {**means, **self.evaluate(model, teacher)}
            if replay is not None:  # DistiLLM's probability moves with the validation loss
                replay.observe(record)
                record["replay_threshold"] = replay.threshold
            return record

        def on_start(model) -> None:  # DistiLLM starts from the validation loss before training
            replay.observe(self.evaluate(model, None))

        spec = RunSpec(run.name, run.steps, run.checkpoint_path, evaluate_every=config.eval_every,
                       checkpoint_every=config.checkpoint_every, progress_keys=("perplexity",))
        optimizer = adamw(run.lr, run.weight_decay)
        return train_run(accelerator, spec, model, optimizer, step_fn, evaluate_fn,
                         lambda model: {"metrics": self.evaluate(model, teacher, examples=self.held_out)},
                         components={"replay": replay} if replay is not None else {}, log_path=self.log_path,
                         on_start=on_start if replay is not None else None)
