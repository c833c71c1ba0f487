"""Sampling completions from a causal LM, as training examples (prompt positions out of the loss)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import TextExample


@torch.no_grad()
def generate_examples(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int, seed: int, *,
                      temperature: float = 1.0, top_p: float = 1.0) -> list[TextExample]:
    """Sample a completion for each prompt from ``causal_lm`` (a :class:`CausalLM`, over its
    tokenizer's tokens only), reproducibly given ``seed``, at sampling ``temperature`` with
    nucleus ``top_p`` (1: the full distribution); the completion up to and including the first
    EOS is the label."""
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ValueError(f"sampling needs temperature > 0 and top_p in (0, 1], got {temperature}, {top_p}")
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
                                   top_k=0, top_p=top_p, temperature=temperature, max_new_tokens=max_new_tokens,
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


@torch.no_grad()
def greedy_completions(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int,
                       batch_size: int = 256) -> list[str]:
    """The greedy (argmax) completion of each prompt, decoded up to its first EOS (special
    tokens skipped): deterministic, for evaluation."""
    model = causal_lm.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, prompt in enumerate(chunk):  # left-padded
            input_ids[row, width - len(prompt):] = torch.tensor(prompt)
            attention[row, width - len(prompt):] = 1
        from transformers import LogitsProcessorList

        sequences = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                                   max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, logits_processor=LogitsProcessorList(
                                       [_TokenizerVocabulary(causal_lm.vocab_size)])).cpu()
        for row in range(len(chunk)):
            completion = sequences[row, width:].tolist()
            if tokenizer.eos_token_id in completion:
                completion = completion[: completion.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(completion, skip_special_tokens=True))
    model.train(was_training)
    return texts


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
