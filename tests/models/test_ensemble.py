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
