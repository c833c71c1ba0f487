"""Sampling completions from a causal LM, as training examples (prompt positions out of the loss).

Both functions call ``transformers``' ``generate`` with an explicit :class:`GenerationConfig` and
with the model's own ``generation_config`` set aside for the call: a hub model ships defaults
(``repetition_penalty``, ``min_p``, ``no_repeat_ngram_size``, ``suppress_tokens``, ...) that
``generate`` would otherwise merge into every call, so the samples would come from another
distribution than the policy that is scored (off-policy for RL and on-policy distillation)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..data import TextExample
from ._enumerate import _adapters_off
from ._modes import evaluating


@torch.no_grad()
def generate_examples(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int, seed: int, *,
                      temperature: float = 1.0, top_p: float = 1.0) -> list[TextExample]:
    """Sample a completion for each prompt from ``causal_lm`` (a :class:`CausalLM`, over its
    tokenizer's tokens only), reproducibly given ``seed``, at sampling ``temperature`` with
    nucleus ``top_p`` (1: the full distribution), nothing else (no top-k, no repetition penalty,
    whatever the model's ``generation_config`` says); the completion up to and including the
    first EOS is the label."""
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ValueError(f"sampling needs temperature > 0 and top_p in (0, 1], got {temperature}, {top_p}")
    device = next(causal_lm.parameters()).device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        completions = _generate(causal_lm, prompts, tokenizer, max_new_tokens, do_sample=True, top_k=0, top_p=top_p,
                                temperature=temperature)
    examples = []
    for prompt, completion in zip(prompts, completions):
        if tokenizer.eos_token_id in completion:
            completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
        examples.append(TextExample.with_prompt(-1, prompt + completion, len(prompt)))
    return examples


@torch.no_grad()
def greedy_completions(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int,
                       batch_size: int = 256, return_ids: bool = False):
    """The greedy (argmax) completion of each prompt, decoded up to its first EOS (special
    tokens skipped): deterministic, for evaluation; the model's ``generation_config`` is
    ignored as in :func:`generate_examples`. With ``return_ids``, ``(texts, ids)``: the ids up to
    and including the first EOS (padding after it dropped)."""
    texts, ids = [], []
    for start in range(0, len(prompts), batch_size):
        for completion in _generate(causal_lm, prompts[start:start + batch_size], tokenizer, max_new_tokens,
                                    do_sample=False):
            if tokenizer.eos_token_id in completion:
                completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
            ids.append(completion)
            texts.append(tokenizer.decode([t for t in completion if t != tokenizer.eos_token_id],
                                          skip_special_tokens=True))
    return (texts, ids) if return_ids else texts


def _generate(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int, **sampling) -> list[list[int]]:
    """The generated tokens of each left-padded prompt (up to ``max_new_tokens``, EOS included,
    padding after it included), in eval mode, under an explicit generation config."""
    with _adapters_off(causal_lm) as causal_lm:  # a LoRA model's adapters-off reference samples from its base
        return _generate_with(causal_lm, prompts, tokenizer, max_new_tokens, **sampling)


def _generate_with(causal_lm, prompts: list[list[int]], tokenizer, max_new_tokens: int, **sampling) -> list[list[int]]:
    from transformers import GenerationConfig, LogitsProcessorList

    width = max(len(p) for p in prompts)
    # left-pad so that every prompt ends where generation starts
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    device = next(causal_lm.parameters()).device
    if hasattr(causal_lm, "sample_tokens"):  # an ensemble: its own loop over the members' combined logits
        with evaluating(causal_lm):
            tokens = causal_lm.sample_tokens(input_ids.to(device), attention.to(device), max_new_tokens,
                                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                             **{k: v for k, v in sampling.items() if k != "top_k"}).cpu()
        return tokens.tolist()
    model = causal_lm.model
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, **sampling)
    with evaluating(model), _without_model_defaults(model):
        sequences = causal_lm.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                       generation_config=config, synced_gpus=_sharded(causal_lm),
                                       logits_processor=LogitsProcessorList(
                                           [_TokenizerVocabulary(causal_lm.vocab_size)])).cpu()
    return [sequences[row, width:].tolist() for row in range(len(prompts))]


def _sharded(causal_lm) -> bool:
    """``causal_lm`` is sharded with FSDP across more than one process: ``generate`` must then keep
    every process stepping until all of them are done (``synced_gpus``), since each forward
    gathers the shards collectively."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(causal_lm, FSDPModule)


@contextlib.contextmanager
def _without_model_defaults(model):
    """``generate`` fills every option the call leaves unset from ``model.generation_config``;
    for the call, that is a blank config (so only the library's global defaults remain)."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own


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
