"""Where a step's training sequences come from: the dataset (off-policy), the student's own
generations (on-policy, GKD's lambda), or DistiLLM's adaptive replay of student generations."""

from __future__ import annotations

import random
from typing import Optional

import torch
from torch import Tensor

from ..data._text import TextExample
from ._runs import epoch_batches


@torch.no_grad()
def generate_examples(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int,
                      seed: int) -> list[TextExample]:
    """Sample a completion for each prompt from ``causal_lm`` (a :class:`CausalLM`, over its
    tokenizer's tokens only), reproducibly given ``seed``; the completion up to and including
    the first EOS is the label."""
    model = causal_lm.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    # left-pad so that every prompt ends where generation starts
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    from transformers import LogitsProcessorList

    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        sequences = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                                   top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                   logits_processor=LogitsProcessorList([_TokenizerVocabulary(causal_lm.vocab_size)])).cpu()
    model.train(was_training)
    examples = []
    for row, prompt in enumerate(prompts):
        completion = sequences[row, width:].tolist()
        if tokenizer.eos_token_id in completion:
            completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
        examples.append(TextExample.with_prompt(-1, prompt + completion, len(prompt)))
    return examples


class _TokenizerVocabulary:
    """Logits processor: no probability for output rows past the tokenizer (a padded
    embedding's rows are not tokens, and the other model could not even embed them)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.shape[-1] > self.size:
            scores = scores.clone()
            scores[..., self.size:] = -torch.inf
        return scores


class AdaptiveOffPolicy:
    r"""DistiLLM's adaptive off-policy schedule with a replay buffer of student generations.

    A probability :math:`\phi` (start ``init``, paper 0) of training on student-generated
    outputs rises by 0.1 (up to 1) whenever the validation loss is at least ``loss_eps`` above
    the last reference value (which then moves to it). Each step draws r ~ U(0, 1): if
    :math:`r < \phi (1 - t/T)`, or :math:`r < \phi` while the buffer is not full, the student
    generates fresh outputs, which are added to the buffer and trained on; else if
    :math:`r < \phi` a batch is sampled from the buffer; else the step uses the dataset.

    References:
        Ko, Kim, Chen, Yun. "DistiLLM: Towards Streamlined Distillation for Large Language
        Models", ICML 2024, arXiv 2402.03898, section 3.2 and its code (decreasing replay ratio).
    """

    def __init__(self, capacity: int, init: float, loss_eps: float, total_steps: int):
        self.capacity, self.loss_eps, self.total_steps = capacity, loss_eps, total_steps
        self.threshold = init
        self.reference_loss: Optional[float] = None
        self.buffer: list[TextExample] = []

    def choose(self, r: float, step: int) -> str:
        """``"generate"``, ``"replay"`` or ``"dataset"`` for a step with draw ``r``."""
        sample_threshold = self.threshold * (1 - step / self.total_steps)
        if r < sample_threshold or (r < self.threshold and len(self.buffer) < self.capacity):
            return "generate"
        if r < self.threshold:
            return "replay"
        return "dataset"

    def add(self, examples: list[TextExample]) -> None:
        self.buffer = (self.buffer + examples)[-self.capacity:]

    def sample(self, count: int, seed: int) -> list[TextExample]:
        return random.Random(seed).sample(self.buffer, k=min(count, len(self.buffer)))

    def observe_validation(self, loss: float) -> None:
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss >= self.reference_loss + self.loss_eps:
            self.threshold = min(self.threshold + 0.1, 1.0)
            self.reference_loss = loss

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "reference_loss": self.reference_loss,
                "buffer": [(e.input_ids, e.labels, e.prompt_length) for e in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.reference_loss = state["threshold"], state["reference_loss"]
        self.buffer = [TextExample(-1, ids, labels, prompt) for ids, labels, prompt in state["buffer"]]


def draw(seed: int, step: int, salt: int = 0) -> float:
    """A uniform draw that depends only on (seed, step, salt): the same on every process and
    after a resume."""
    return random.Random((seed * 1_000_003 + step) * 31 + salt).random()


def step_order(num_examples: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Dataset indices of step ``step``'s global batch: the epochs' seeded batch orders, one
    after another."""
    per_epoch = num_examples // batch_size if batch_size >= 1 else 0
    if per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the {num_examples} training examples")
    epoch, position = divmod(step, per_epoch)
    return epoch_batches(num_examples, batch_size, seed, epoch)[position]
