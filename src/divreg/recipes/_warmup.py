"""Shared by the recipes that train a policy on the built-in task (``rl``, ``preference``): the
supervised warm-up on the task's answers and greedy exact-match accuracy."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from accelerate import Accelerator

from ..data import IGNORE_INDEX, TaskProblem, TextExample, collate, exact_match_reward
from ..models import CausalLM, greedy_completions
from ..training import RunSpec, backward_micro_batches, step_batch, to_device, train_run


def exact_match_accuracy(accelerator: Accelerator, model, prompt_ids: list[list[int]], problems: list[TaskProblem],
                         tokenizer, max_new_tokens: int) -> float:
    """Exact-match accuracy of greedy completions of ``prompt_ids`` against the problems' answers."""
    texts = greedy_completions(accelerator.unwrap_model(model), prompt_ids, tokenizer, max_new_tokens)
    return sum(exact_match_reward(texts, [p.answer for p in problems])) / len(problems)


def supervised_warmup(accelerator: Accelerator, model: CausalLM, examples: list[TextExample], tokenizer, *,
                      name: str, seed: int, steps: int, batch_size: int, lr: float, grad_accum: int,
                      checkpoint_path: str, checkpoint_every: int, accuracy: Callable[[CausalLM], float],
                      target: Optional[float] = None, eval_every: int = 100, log_path: Optional[str] = None,
                      metric: str = "test_accuracy") -> dict:
    """CE on prompt -> answer (token mean over the global batch) for ``steps`` steps, evaluated by
    ``accuracy(model)`` (logged as ``metric``); with ``target``, evaluated every ``eval_every``
    steps and stopped at the first evaluation whose value reaches it. Returns the run's final
    checkpoint."""
    rank, processes = accelerator.process_index, accelerator.num_processes

    def ce(model, batch, counts):
        logits = model(batch["input_ids"], batch["attention_mask"])[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:],
                                                 ignore_index=IGNORE_INDEX, reduction="sum") / counts.tokens
        return loss, {"loss": loss.detach()}

    def step_fn(model, optimizer, step: int) -> dict:
        indices = step_batch(len(examples), batch_size, seed, step)[rank::processes]
        chosen = [examples[i] for i in indices.tolist()]
        micro = [collate(chosen[i::grad_accum], tokenizer.pad_token_id) for i in range(grad_accum)]
        totals = backward_micro_batches(accelerator, model, [to_device(b, accelerator.device) for b in micro], ce)
        optimizer.step()
        optimizer.zero_grad()
        return totals

    spec = RunSpec(name, steps, checkpoint_path, evaluate_every=steps if target is None else eval_every,
                   checkpoint_every=checkpoint_every,
                   stop_when=None if target is None else (lambda record: record[metric] >= target))
    optimizer = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)
    return train_run(accelerator, spec, model, optimizer, step_fn,
                     lambda model, step, means: {**means, metric: accuracy(model)},
                     lambda model: {"metrics": {metric: accuracy(model)}}, log_path=log_path)
