"""The exact sequence KL by the chain rule over the completion tree equals the KL computed from
every complete sequence's probability under both models (brute force), and refuses too-large
trees."""

import itertools
import math

import pytest
import torch

from divreg.data import char_tokenizer
from divreg.models import CausalLM, ModelSource, build_causal_lm, exact_sequence_kl

CONFIG = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}


def _model(seed):
    tokenizer = char_tokenizer()
    return CausalLM(build_causal_lm(ModelSource(config=CONFIG), tokenizer, seed), len(tokenizer)).double().eval()


def _sequence_logprobs(model, prompt, completions):
    """log p(y | prompt) of each complete sequence y, from one right-padded batch (causal: the
    padding after y never changes y's positions)."""
    width = len(prompt) + max(len(y) for y in completions)
    ids = torch.zeros(len(completions), width, dtype=torch.long)
    for row, y in enumerate(completions):
        ids[row, :len(prompt) + len(y)] = torch.tensor(prompt + y)
    log_probs = torch.log_softmax(model(ids, torch.ones_like(ids)).double(), -1)
    return [sum(float(log_probs[row, len(prompt) - 1 + i, token]) for i, token in enumerate(y))
            for row, y in enumerate(completions)]


def test_exact_sequence_kl_equals_the_brute_force_sum_over_complete_sequences():
    tokenizer = char_tokenizer()
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    policy, reference = _model(0), _model(1)
    prompts = [tokenizer("12+3=")["input_ids"], tokenizer("7*8=")["input_ids"]]
    others = [t for t in range(vocab) if t != eos]
    with torch.no_grad():
        for length in (1, 2, 3):
            got = exact_sequence_kl(policy, reference, prompts, eos, length, batch_size=100)
            for row, prompt in enumerate(prompts):
                complete = [list(body) + [eos] for d in range(length) for body in itertools.product(others, repeat=d)]
                complete += [list(body) for body in itertools.product(others, repeat=length)]  # cut at the limit
                kl, mass = 0.0, 0.0
                for lp, lr in zip(_sequence_logprobs(policy, prompt, complete), _sequence_logprobs(reference, prompt,
                                                                                                    complete)):
                    kl += math.exp(lp) * (lp - lr)
                    mass += math.exp(lp)
                assert mass == pytest.approx(1.0, abs=1e-9)  # every complete sequence enumerated once
                assert float(got[row]) == pytest.approx(kl, rel=1e-9, abs=1e-12), (length, row)
        assert torch.equal(exact_sequence_kl(policy, policy, prompts, eos, 2), torch.zeros(2, dtype=torch.float64))


def test_exact_sequence_kl_refuses_large_trees_and_mismatched_vocabularies():
    tokenizer = char_tokenizer()
    policy = _model(0)
    with pytest.raises(ValueError, match="exceeds max_sequences=1000"):
        exact_sequence_kl(policy, policy, [[4, 5]], tokenizer.eos_token_id, 4, max_sequences=1000)
    other = CausalLM(policy.model, 10)
    with pytest.raises(ValueError, match="a KL needs one vocabulary"):
        exact_sequence_kl(policy, other, [[4, 5]], tokenizer.eos_token_id, 2)
