"""One training run of the LM recipe: the teacher's CE pre-training or one student's
distillation. Accelerate for processes, global token normalization, atomic checkpoints, exact
resume (all randomness is a function of the seed and the step)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..data._text import IGNORE_INDEX, TextExample, collate
from ..divergences import forward_kl
from ._checkpoint import load_if_exists, save_atomic
from ._lm_config import DistillLMConfig, LMMethod
from ._lm_models import CausalLM
from ._lm_sources import AdaptiveOffPolicy, draw, generate_examples, step_order
from ._runs import append_record


@dataclass
class LMRun:
    name: str
    method: Optional[LMMethod]  # None: plain CE training (the teacher)
    steps: int
    lr: float
    checkpoint_path: str


def global_token_count(batches: list[dict], accelerator: Accelerator) -> torch.Tensor:
    """Valid (shifted) label tokens over all micro-batches of all processes: the N that
    normalizes every micro-batch loss."""
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    return accelerator.reduce(torch.tensor(float(local), device=accelerator.device), "sum")


@torch.no_grad()
def evaluate(student: CausalLM, teacher: Optional[CausalLM], examples: list[TextExample], pad_token_id: int,
             batch_size: int = 16) -> dict[str, float]:
    """Held-out perplexity of the student and its mean per-token KL(teacher || student) (both
    over the tokenizer's tokens, see :class:`CausalLM`)."""
    was_training = student.training
    student.eval()
    nll_sum, kl_sum, tokens = 0.0, 0.0, 0
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
    student.train(was_training)
    result = {"perplexity": math.exp(nll_sum / tokens), "nll": nll_sum / tokens}
    if teacher is not None:
        result["kl_to_teacher"] = kl_sum / tokens
    return result


class LMTrainer:
    """Trains runs one after another; ``loss_fn(model, micro_batch, num_items) -> (loss, parts)``."""

    def __init__(self, accelerator: Accelerator, config: DistillLMConfig, tokenizer, train: list[TextExample],
                 held_out: list[TextExample], log_path: str):
        self.accelerator, self.config, self.tokenizer = accelerator, config, tokenizer
        self.teacher_model = None  # set by the recipe: generates the data of sequence-level KD
        self.train, self.held_out, self.log_path = train, held_out, log_path
        self.eval_subset = held_out[: config.eval_examples]
        if config.batch_size % (accelerator.num_processes * config.grad_accum):
            raise ValueError(f"batch_size={config.batch_size} must be divisible by processes x grad_accum "
                             f"({accelerator.num_processes} x {config.grad_accum})")

    def _local_examples(self, run: LMRun, step: int, model, replay: Optional[AdaptiveOffPolicy]) -> tuple[list, str]:
        """This process's examples for ``step`` and where they came from."""
        accelerator, config = self.accelerator, self.config
        global_indices = step_order(len(self.train), config.batch_size, config.seed, step)
        local_indices = global_indices.tensor_split(accelerator.num_processes)[accelerator.process_index]
        examples = [self.train[i] for i in local_indices.tolist()]
        method = run.method
        if method is None:
            return examples, "dataset"
        r = draw(config.seed, step)
        source = replay.choose(r, step) if replay is not None else ("generate" if r < method.lmbda else "dataset")
        seed = (config.seed * 1_000_003 + step) * 64 + accelerator.process_index
        if source == "dataset" and method.sequence_kd:
            prompts = [e.input_ids[: e.prompt_length] for e in examples]
            return generate_examples(self.teacher_model, prompts, self.tokenizer, config.max_new_tokens,
                                     seed), "teacher"
        if source == "generate":
            prompts = [e.input_ids[: e.prompt_length] for e in examples]
            examples = generate_examples(accelerator.unwrap_model(model), prompts, self.tokenizer,
                                         config.max_new_tokens, seed)
            if replay is not None:
                replay.add(examples)
        elif source == "replay":
            examples = replay.sample(len(examples), seed)
        return examples, source

    def run(self, run: LMRun, model: CausalLM, loss_fn: Callable, teacher: Optional[CausalLM]) -> dict:
        saved = load_if_exists(run.checkpoint_path)
        if saved is not None and saved["done"]:
            model.load_state_dict(saved["model"])
            return saved
        accelerator, config = self.accelerator, self.config
        optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.0)
        model, optimizer = accelerator.prepare(model, optimizer)
        replay = (AdaptiveOffPolicy(config.replay_capacity, config.replay_init, config.replay_loss_eps, run.steps)
                  if run.method is not None and run.method.adaptive_off_policy else None)
        position = {"step": 0, "history": []}
        if saved is not None:
            accelerator.unwrap_model(model).load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            position = saved["position"]
            if replay is not None:
                replay.load_state_dict(saved["replay"][accelerator.process_index])
        elif replay is not None:  # DistiLLM starts from the validation loss before training
            replay.observe_validation(self._evaluate(model, None)["nll"])

        def checkpoint(done: bool = False, **extra) -> dict:
            replays = accelerator.gather_for_metrics([replay.state_dict() if replay else None], use_gather_object=True)
            state = {"done": done, "name": run.name, "model": accelerator.unwrap_model(model).state_dict(),
                     "optimizer": optimizer.state_dict(), "position": position, "replay": replays, **extra}
            if accelerator.is_main_process:
                save_atomic(state, run.checkpoint_path)
            accelerator.wait_for_everyone()
            return state

        model.train()
        progress = tqdm(range(position["step"], run.steps), desc=run.name, leave=False,
                        disable=not accelerator.is_local_main_process)
        for step in progress:
            examples, source = self._local_examples(run, step, model, replay)
            micro = [collate(examples[i::config.grad_accum], self.tokenizer.pad_token_id)
                     for i in range(config.grad_accum)]
            micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
            num_items = global_token_count(micro, accelerator)
            totals = {"loss": 0.0, "divergence": 0.0, "ce": 0.0}
            for index, batch in enumerate(micro):
                context = accelerator.no_sync(model) if index < len(micro) - 1 else nullcontext()
                with context:
                    loss, parts = loss_fn(model, batch, num_items)
                    accelerator.backward(loss * accelerator.num_processes)  # DDP averages over processes
                for key, value in parts.items():
                    totals[key] += float(accelerator.reduce(value.detach(), "sum"))
            optimizer.step()
            optimizer.zero_grad()
            position["step"] = step + 1
            if (step + 1) % config.eval_every == 0 or step + 1 == run.steps:
                record = {"run": run.name, "step": step + 1, "source": source, **totals,
                          **self._evaluate(model, teacher)}
                if replay is not None:
                    replay.observe_validation(record["nll"])
                    record["replay_threshold"] = replay.threshold
                position["history"].append(record)
                append_record(self.accelerator, self.log_path, record)
                progress.set_postfix(ppl=f"{record['perplexity']:.1f}")
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < run.steps:
                checkpoint()
        metrics = self._evaluate(model, teacher, examples=self.held_out)
        return checkpoint(done=True, metrics=metrics)

    def _evaluate(self, model, teacher, examples=None) -> dict[str, float]:
        return evaluate(self.accelerator.unwrap_model(model), teacher, examples or self.eval_subset,
                        self.tokenizer.pad_token_id)
