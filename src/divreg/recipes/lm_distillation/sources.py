"""Where a step's training sequences come from: the dataset (off-policy), the teacher's
generations (sequence-level KD), the student's own generations (on-policy, GKD's lambda), or
DistiLLM's adaptive replay of student generations."""

from __future__ import annotations

import random
from typing import Callable, Mapping, Optional

from ...data import TextExample
from ...models import generate_examples
from ...schedules import AdaptiveReplayProbability
from ...training import derive_seed, step_batch, uniform_draw
from .config import DistillLMConfig, LMMethod


class AdaptiveOffPolicy:
    r"""DistiLLM's adaptive off-policy source with a replay buffer of student generations.

    The probability :math:`\phi` of student-generated data is a stateful schedule
    (:class:`divreg.schedules.AdaptiveReplayProbability`: it rises when the validation loss
    rises). Each step draws r ~ U(0, 1): if :math:`r < \phi (1 - t/T)`, or :math:`r < \phi` while
    the buffer is not full, the student generates fresh outputs, which are added to the buffer
    and trained on; else if :math:`r < \phi` a batch is sampled from the buffer; else the step
    uses the dataset.

    References:
        Ko, Kim, Chen, Yun. "DistiLLM: Towards Streamlined Distillation for Large Language
        Models", ICML 2024, arXiv 2402.03898, section 3.2 and its code (decreasing replay ratio).
    """

    def __init__(self, capacity: int, init: float, loss_eps: float, total_steps: int):
        self.capacity, self.total_steps = capacity, total_steps
        self.probability = AdaptiveReplayProbability(init=init, loss_eps=loss_eps, metric="nll")
        self.buffer: list[TextExample] = []

    @property
    def threshold(self) -> float:
        return self.probability(0)

    def choose(self, r: float, step: int) -> str:
        """``"generate"``, ``"replay"`` or ``"dataset"`` for a step with draw ``r``."""
        phi = self.probability(step)
        if r < phi * (1 - step / self.total_steps) or (r < phi and len(self.buffer) < self.capacity):
            return "generate"
        return "replay" if r < phi else "dataset"

    def add(self, examples: list[TextExample]) -> None:
        self.buffer = (self.buffer + examples)[-self.capacity:]

    def sample(self, count: int, seed: int) -> list[TextExample]:
        return random.Random(seed).sample(self.buffer, k=min(count, len(self.buffer)))

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Learn from an evaluation record (its ``nll`` is the validation loss)."""
        self.probability.observe(metrics)

    def state_dict(self) -> dict:
        return {"probability": self.probability.state_dict(),
                "buffer": [(e.input_ids, e.labels, e.prompt_length) for e in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.probability.load_state_dict(state["probability"])
        self.buffer = [TextExample(-1, ids, labels, prompt) for ids, labels, prompt in state["buffer"]]


class StepSource:
    """This process's examples of each step, and where they came from."""

    def __init__(self, config: DistillLMConfig, method: Optional[LMMethod], train: list[TextExample], tokenizer,
                 teacher=None, replay: Optional[AdaptiveOffPolicy] = None, seed: int = 0, sampler=None,
                 sync: Optional[Callable] = None):
        self.config, self.method, self.train, self.tokenizer, self.seed = config, method, train, tokenizer, seed
        self.teacher, self.replay = teacher, replay
        # generation.server: the student's samples come from vLLM; ``sync(student)`` puts its weights there first
        # (called on every process together: the choice to generate is the same on all of them)
        self.sampler, self.sync, self.last_sync = sampler, sync, {}

    def _generate(self, model, examples: list[TextExample], seed: int, served: bool = False) -> list[TextExample]:
        prompts = [e.input_ids[: e.prompt_length] for e in examples]
        if served:
            self.last_sync = self.sync(model)
            sampled = self.sampler.sample(prompts, 1, self.config.max_new_tokens, self.config.sampling_temperature,
                                          self.config.top_p, seed)
            return [TextExample.with_prompt(-1, list(prompt) + ids, len(prompt)) for prompt, (ids, _) in
                    zip(prompts, sampled)]
        return generate_examples(model, prompts, self.tokenizer, self.config.max_new_tokens, seed,
                                 temperature=self.config.sampling_temperature, top_p=self.config.top_p)

    def examples(self, step: int, student, process_index: int, num_processes: int) -> tuple[list[TextExample], str]:
        """(examples, source) of ``step`` on this process; ``student`` is the bare model."""
        config, method = self.config, self.method
        global_indices = step_batch(len(self.train), config.batch_size, self.seed, step)
        local_indices = global_indices.tensor_split(num_processes)[process_index]
        examples = [self.train[i] for i in local_indices.tolist()]
        if method is None:
            return examples, "dataset"
        r = uniform_draw(self.seed, step)  # the same on every process
        source = self.replay.choose(r, step) if self.replay is not None else (
            "generate" if r < method.lmbda else "dataset")
        seed = derive_seed(self.seed, step, process_index)
        # sequence_kd: a step that would read the dataset reads the teacher's generations instead, with probability
        # sequence_kd (its own draw, the same on every process; 1: every such step)
        if source == "dataset" and method.sequence_kd > 0 and (
                method.sequence_kd >= 1.0 or uniform_draw(self.seed, step, 1) < method.sequence_kd):
            return self._generate(self.teacher, examples, seed), "teacher"
        if source == "generate":
            examples = self._generate(student, examples, seed, served=self.sampler is not None)
            if self.replay is not None:
                self.replay.add(examples)
        elif source == "replay":
            examples = self.replay.sample(len(examples), seed)
        return examples, source
