"""Language models as the samplers see them: a batch of particles advanced one token at a time.

A particle model has ``vocab_size`` and ``eos_token_id`` and three methods:

- ``start(n) -> (n, V)``: next-token log-probabilities of ``n`` fresh particles (after the prompt);
- ``advance(tokens) -> (n, V)``: append one token (an ``(n,)`` tensor) to every particle;
- ``reorder(index)``: particle i becomes old particle ``index[i]`` (after resampling);

and ``next_log_probs(ids) -> (V,)`` for one sequence (no cache), used by exact enumeration.

``TransformersLM`` wraps a ``transformers`` causal LM with one batched forward per step over all
particles and a ``DynamicCache`` (the prompt is encoded once, then repeated across particles;
resampling reorders the cache with ``reorder_cache``). ``BigramLM`` is an exactly enumerable toy.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch
from torch import Tensor


class BigramLM:
    """p(y_1) = softmax(initial), p(y_t | y_{t-1}) = softmax(transition[y_{t-1}])."""

    def __init__(self, initial: Tensor, transition: Tensor, eos_token_id: int):
        if initial.dim() != 1 or transition.shape != (initial.numel(), initial.numel()):
            raise ValueError(f"initial must be (V,) and transition (V, V); got {tuple(initial.shape)} and "
                             f"{tuple(transition.shape)}")
        if not 0 <= eos_token_id < initial.numel():
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary of {initial.numel()} tokens")
        self.initial = initial.double().log_softmax(-1)
        self.transition = transition.double().log_softmax(-1)
        self.vocab_size, self.eos_token_id = initial.numel(), eos_token_id
        self._last: Optional[Tensor] = None

    @classmethod
    def random(cls, vocab_size: int, eos_token_id: int, generator: torch.Generator, scale: float = 1.5) -> "BigramLM":
        """Logits ``scale * N(0, 1)`` for the first token and each transition."""
        return cls(scale * torch.randn(vocab_size, generator=generator, dtype=torch.float64),
                   scale * torch.randn(vocab_size, vocab_size, generator=generator, dtype=torch.float64), eos_token_id)

    def next_log_probs(self, ids: Sequence[int]) -> Tensor:
        return self.initial if len(ids) == 0 else self.transition[int(ids[-1])]

    def start(self, n: int) -> Tensor:
        self._last = None
        return self.initial.expand(n, -1)

    def advance(self, tokens: Tensor) -> Tensor:
        self._last = tokens.long()
        return self.transition[self._last]

    def reorder(self, index: Tensor) -> None:
        if self._last is not None:
            self._last = self._last[index]


class TransformersLM:
    """A ``transformers`` causal LM after ``prompt_ids`` (at least one token, e.g. BOS), in eval
    mode, without gradients; log-probabilities in float32 from the model's last-position logits."""

    def __init__(self, model, prompt_ids: Sequence[int], eos_token_id: Optional[int] = None):
        if len(prompt_ids) == 0:
            raise ValueError("prompt_ids is empty: give at least one token (e.g. the BOS token) to condition on")
        self.model = model.eval()
        self.prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self._device())
        eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
        if isinstance(eos, (list, tuple)):
            if len(eos) != 1:
                raise ValueError(f"the model's config has several EOS ids {list(eos)}: pass eos_token_id= the one "
                                 "your constraint ends with (the others are then ordinary tokens)")
            eos = eos[0]
        if eos is None:
            raise ValueError("the model's config has no eos_token_id: pass eos_token_id=")
        self.eos_token_id = int(eos)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._cache = None
        # transformers 5 names the KV cache `cache` (4.x: `past_key_values`)
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def next_log_probs(self, ids: Sequence[int]) -> Tensor:
        tail = torch.tensor([list(ids)], dtype=torch.long, device=self.prompt.device)
        logits = self.model(input_ids=torch.cat([self.prompt, tail], 1)).logits[0, -1]
        return logits.float().log_softmax(-1).cpu()

    @torch.no_grad()
    def start(self, n: int) -> Tensor:
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self.model(input_ids=self.prompt, use_cache=True, **{self._cache_name: cache}).logits[:, -1]
        cache.batch_repeat_interleave(n)
        self._cache = cache
        return logits.float().log_softmax(-1).expand(n, -1).cpu()

    @torch.no_grad()
    def advance(self, tokens: Tensor) -> Tensor:
        if self._cache is None:
            raise RuntimeError("call start(n) before advance(tokens)")
        out = self.model(input_ids=tokens.long().view(-1, 1).to(self.prompt.device), use_cache=True,
                         **{self._cache_name: self._cache})
        self._cache = out[self._cache_name]
        return out.logits[:, -1].float().log_softmax(-1).cpu()

    def reorder(self, index: Tensor) -> None:
        if self._cache is not None:
            self._cache.reorder_cache(index.to(self.prompt.device))
