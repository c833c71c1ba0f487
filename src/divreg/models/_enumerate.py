"""Exact sequence-level quantities of a causal LM by enumerating every completion (small
vocabularies and short completions only): no sampling noise."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


@torch.no_grad()
def exact_sequence_kl(policy, reference, prompts: list[list[int]], eos_token_id: int, max_new_tokens: int,
                      max_sequences: int = 500_000, batch_size: int = 4096) -> Tensor:
    r"""The sequence-level :math:`KL(\pi(\cdot|x) \| \pi_{ref}(\cdot|x))` of each prompt, exactly,
    for completions sampled at temperature 1 until EOS or ``max_new_tokens`` tokens (how
    :func:`generate_examples` samples):

    .. math::
        KL = \sum_{s} \pi(s|x)\; KL\big(\pi(\cdot|x, s) \,\|\, \pi_{ref}(\cdot|x, s)\big)

    over every unfinished prefix :math:`s` (no EOS, fewer than ``max_new_tokens`` tokens): the
    chain rule of the KL over the tree of completions. One forward pass per model over the
    :math:`(V-1)^{L-1}` EOS-free continuations of length :math:`L-1` gives the next-token
    distributions of every prefix.

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
    continuations = torch.tensor(list(itertools.product(tokens, repeat=depth)), dtype=torch.long).reshape(
        len(tokens) ** depth, depth)
    # a depth-d prefix appears (V-1)^(depth-d) times among the continuations: weight each copy down
    copies = torch.tensor([float(len(tokens)) ** (depth - d) for d in range(depth + 1)], dtype=torch.float64)
    device = next(policy.parameters()).device
    results = []
    for prompt in prompts:
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, continuations.shape[0], batch_size):
            rows = continuations[start:start + batch_size]
            ids = torch.cat([torch.tensor(prompt).expand(rows.shape[0], -1), rows], 1).to(device)
            mask = torch.ones_like(ids)
            positions = slice(len(prompt) - 1, len(prompt) + depth)  # predicting completion tokens 0..depth
            log_pi = torch.log_softmax(policy(ids, mask)[:, positions].double(), -1).cpu()  # (N, depth+1, V)
            log_ref = torch.log_softmax(reference(ids, mask)[:, positions].double(), -1).cpu()
            step_kl = (log_pi.exp() * (log_pi - log_ref)).sum(-1)  # (N, depth+1): KL at each prefix
            taken = log_pi[:, :depth].gather(-1, rows[..., None]).squeeze(-1)  # log pi of each continuation token
            prefix = torch.cat([torch.zeros(rows.shape[0], 1, dtype=torch.float64), taken.cumsum(1)], 1).exp()
            total += (prefix * step_kl / copies).sum()
        results.append(total)
    return torch.stack(results)
