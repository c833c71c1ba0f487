"""The ensemble teacher: the members' logits averaged (the paper's LogitAvg), or their
probabilities mixed; one vocabulary; no hidden-state path."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from divreg.models import CausalLM, LogitEnsemble


def _member(seed: int, vocab: int = 40) -> CausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    return CausalLM(LlamaForCausalLM(config)).double()


def test_logit_average_and_probability_mixture_against_the_members():
    members = [_member(s) for s in range(3)]
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    each = torch.stack([m(ids, mask) for m in members])  # (3, B, T, V)
    torch.testing.assert_close(LogitEnsemble(members)(ids, mask), each.mean(0).float(), rtol=1e-6, atol=1e-6)
    mixture = torch.softmax(each, -1).mean(0)
    got = torch.softmax(LogitEnsemble(members, combine="probabilities")(ids, mask).double(), -1)
    torch.testing.assert_close(got, mixture, rtol=1e-6, atol=1e-7)
    # the two differ (softmax of the mean logit is not the mean probability) unless the members agree
    assert not torch.allclose(torch.softmax(each.mean(0), -1), mixture, atol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="different vocabularies"):
        LogitEnsemble([_member(0, 40), _member(1, 48)])
    with pytest.raises(ValueError, match="combine must be"):
        LogitEnsemble([_member(0)], combine="max")
    with pytest.raises(ValueError, match="fused=false"):
        LogitEnsemble([_member(0)])(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), hidden=True)


class _Tokenizer:  # what generate_examples reads of a tokenizer
    pad_token_id, eos_token_id = 0, 1


PROMPTS = [[5, 7, 9, 11], [3, 4]]  # different lengths: left padding


def test_a_one_member_ensemble_samples_what_its_member_generates():
    """Sampling (temperature, top_p) and greedy: the same tokens as transformers' ``generate``
    under the same seed, with left-padded prompts."""
    from divreg.models import generate_examples
    from divreg.models._generation import _generate

    member = _member(0)
    for sampling in ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 1.0}):
        expected = generate_examples(member, PROMPTS, _Tokenizer, 6, seed=3, **sampling)
        got = generate_examples(LogitEnsemble([member]), PROMPTS, _Tokenizer, 6, seed=3, **sampling)
        assert [e.input_ids for e in got] == [e.input_ids for e in expected]
        assert [e.labels for e in got] == [e.labels for e in expected]
    assert _generate(LogitEnsemble([member]), PROMPTS, _Tokenizer, 6, do_sample=False) == \
        _generate(member, PROMPTS, _Tokenizer, 6, do_sample=False)


@pytest.mark.parametrize("combine", ["logits", "probabilities"])
def test_ensemble_greedy_tokens_are_the_argmax_of_the_combined_full_forward(combine):
    """With KV caches and left padding, each greedy token is the argmax of the ensemble's own
    forward over the whole sequence so far (no cache)."""
    from divreg.models._generation import _generate

    ensemble = LogitEnsemble([_member(s) for s in range(3)], combine=combine)
    completions = _generate(ensemble, PROMPTS, _Tokenizer, 5, do_sample=False)
    for prompt, completion in zip(PROMPTS, completions):
        sequence = list(prompt)
        for token in completion:
            if sequence[len(prompt):] and sequence[-1] == _Tokenizer.eos_token_id:
                assert token == _Tokenizer.pad_token_id
                continue
            ids = torch.tensor([sequence])
            assert token == int(ensemble(ids, torch.ones_like(ids))[0, -1].argmax())
            sequence.append(token)
