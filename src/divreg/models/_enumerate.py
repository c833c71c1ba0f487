"""Exact sequence-level quantities of a causal LM by enumerating every completion (small
vocabularies and short completions only): no sampling noise."""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import Tensor

from ._causal_lm import AdaptersOff, cache_keyword


@torch.no_grad()
def exact_sequence_kl(policy, reference, prompts: list[list[int]], eos_token_id: int, max_new_tokens: int,
                      max_sequences: int = 500_000, batch_size: int = 4096) -> Tensor:
    r"""The sequence-level :math:`KL(\pi(\cdot|x) \| \pi_{ref}(\cdot|x))` of each prompt, exactly,
    for completions sampled at temperature 1 until EOS or ``max_new_tokens`` tokens (how
    :func:`generate_examples` samples):

    .. math::
        KL = \sum_{s} \pi(s|x)\; KL\big(\pi(\cdot|x, s) \,\|\, \pi_{ref}(\cdot|x, s)\big)

    over every unfinished prefix :math:`s` (no EOS, fewer than ``max_new_tokens`` tokens): the
    chain rule of the KL over the tree of completions. Per model, one forward pass over the
    :math:`(V-1)^{L-2}` EOS-free continuations of length :math:`L-2` (with their KV cache), then
    one token for each of their :math:`V-1` extensions, give the next-token distributions of every
    prefix.

    Args:
        policy, reference: :class:`CausalLM` with the same ``vocab_size`` V (and tokenizer).
        prompts: token ids of each prompt.
        eos_token_id: the token that ends a completion.
        max_new_tokens: L, the completion length limit.
        max_sequences: refuse (a clear error) when :math:`(V-1)^{L-1}` exceeds this.

    Returns:
        (len(prompts),) float64 KL per prompt.
    """
    vocab = policy.vocab_size
    if reference.vocab_size != vocab:
        raise ValueError(f"the policy reads {vocab} tokens and the reference {reference.vocab_size}: a KL needs one "
                         "vocabulary")
    if max_new_tokens < 1 or not 0 <= eos_token_id < vocab:
        raise ValueError(f"need max_new_tokens >= 1 and an EOS id in [0, {vocab}), got {max_new_tokens}, {eos_token_id}")
    depth = max_new_tokens - 1
    if (vocab - 1) ** depth > max_sequences:
        raise ValueError(f"enumerating {vocab - 1}^{depth} = {(vocab - 1) ** depth} continuations per prompt exceeds "
                         f"max_sequences={max_sequences}: the exact KL is for small vocabularies and short completions; "
                         "use a sampled estimate instead")
    tokens = [t for t in range(vocab) if t != eos_token_id]
    width = len(tokens)
    # the EOS-free continuations of length depth - 1 (their last-position logits give depth - 1), then
    # one more token each from their KV cache (depth): every unfinished prefix's next-token distribution
    stems = torch.tensor(list(itertools.product(tokens, repeat=max(depth - 1, 0))), dtype=torch.long).reshape(
        width ** max(depth - 1, 0), max(depth - 1, 0))
    last = torch.tensor(tokens, dtype=torch.long)
    # a depth-d prefix appears width^(depth-d) times among the full continuations: weight each copy down
    copies = torch.tensor([float(width) ** (depth - d) for d in range(depth + 1)], dtype=torch.float64)
    device = next(policy.parameters()).device
    stems_per_batch = max(1, batch_size // width)
    results = []
    for prompt in prompts:
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, stems.shape[0], stems_per_batch):
            rows = stems[start:start + stems_per_batch]
            log_pi = _next_token_logprobs(policy, prompt, rows, last if depth else None, device)
            with _adapters_off(reference) as ref_model:  # a LoRA model's adapters-off reference reads its base
                log_ref = _next_token_logprobs(ref_model, prompt, rows, last if depth else None, device)
            full = rows  # depth 0: the prompt alone
            if depth:  # every stem with every last token, stem-major: (N, depth)
                full = torch.cat([rows.repeat_interleave(width, 0), last.repeat(rows.shape[0])[:, None]], 1)
            step_kl = (log_pi.exp() * (log_pi - log_ref)).sum(-1)  # (N, depth + 1): KL at each prefix
            taken = log_pi[:, :depth].gather(-1, full[..., None]).squeeze(-1)  # log pi of each continuation token
            prefix = torch.cat([torch.zeros(full.shape[0], 1, dtype=torch.float64), taken.cumsum(1)], 1).exp()
            total += (prefix * step_kl / copies).sum()
        results.append(total)
    return torch.stack(results)


@contextlib.contextmanager
def _adapters_off(model):
    """``model`` itself, or for an :class:`AdaptersOff` reference its LoRA model with the adapters
    disabled for the duration (the enumeration drives the model's KV cache itself)."""
    if isinstance(model, AdaptersOff):
        with torch.no_grad(), model.adapted.model.disable_adapter():
            yield model.adapted
    else:
        yield model


def _next_token_logprobs(model, prompt: list[int], stems: Tensor, last: Tensor, device) -> Tensor:
    """(stems x len(last), depth + 1, V) float64 next-token log-probs along ``prompt + stem +
    last token`` for every stem and every last token (stem-major), the last position from the
    stems' KV cache; with ``last`` None, along ``prompt`` alone (depth 0)."""
    ids = torch.cat([torch.tensor(prompt).expand(stems.shape[0], -1), stems], 1).to(device)
    out = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=last is not None)
    positions = slice(len(prompt) - 1, ids.shape[1])
    head = torch.log_softmax(out.logits[:, positions, :model.vocab_size].double(), -1).cpu()  # (S, depth, V)
    if last is None:
        return head
    width = last.shape[0]
    name = cache_keyword(model.model)
    cache = out[name]
    cache.batch_repeat_interleave(width)
    step = last.repeat(stems.shape[0])[:, None].to(device)
    tail = model.model(input_ids=step, attention_mask=torch.ones(step.shape[0], ids.shape[1] + 1, dtype=torch.long,
                                                                 device=device), use_cache=True, **{name: cache})
    tail = torch.log_softmax(tail.logits[:, -1:, :model.vocab_size].double(), -1).cpu()  # (S * width, 1, V)
    return torch.cat([head.repeat_interleave(width, 0), tail], 1)
