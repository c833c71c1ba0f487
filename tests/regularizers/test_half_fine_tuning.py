"""Half Fine-Tuning's mask: the paper's per-layer counts, embeddings and head trainable, a
function of the seed, a clear error on other naming; an optimizer step leaves the frozen half."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from divreg.regularizers import apply_half_fine_tuning, half_fine_tuning_mask


def _llama(layers: int = 6) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2))


def test_per_layer_counts_and_untouched_embeddings_and_head():
    model = _llama(6)
    mask = half_fine_tuning_mask(model, seed=3)
    two_mlp = 0
    for layer in range(6):
        parts = [re.sub(rf".*layers\.{layer}\.", "", n) for n in mask.frozen if f"layers.{layer}." in n]
        assert sum(p.startswith("self_attn.") for p in parts) == 2
        mlp = sum(p.startswith("mlp.") for p in parts)
        assert mlp in (1, 2)
        two_mlp += mlp == 2
        assert sum(p.endswith("layernorm.weight") for p in parts) == 1
    assert two_mlp == 3  # L // 2 layers freeze 2 of 3 MLP matrices
    assert not [n for n in mask.frozen if "embed" in n or "lm_head" in n or n == "model.norm.weight"]
    assert 0.35 < mask.frozen_share < 0.65


def test_a_function_of_the_seed():
    assert half_fine_tuning_mask(_llama(), 0).frozen == half_fine_tuning_mask(_llama(), 0).frozen
    assert half_fine_tuning_mask(_llama(), 0).frozen != half_fine_tuning_mask(_llama(), 1).frozen


def test_an_optimizer_step_leaves_the_frozen_half():
    model = _llama(2)
    mask = apply_half_fine_tuning(model, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    model(torch.randint(0, 64, (2, 8)), labels=torch.randint(0, 64, (2, 8))).loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) == (name in mask.frozen), name


def test_other_naming_is_refused_with_the_names_found():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4))
    with pytest.raises(ValueError, match="Llama"):
        half_fine_tuning_mask(model, 0)
