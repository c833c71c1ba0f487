"""Loading and building the recipe's causal LMs and tokenizers, and a thin wrapper that lets
DDP see the forward pass of the fused path (hidden states instead of logits)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._lm_config import ModelSource


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no EOS token")
    return tokenizer


def build_model(source: ModelSource, tokenizer, seed: int):
    """``AutoModelForCausalLM`` from ``source.path`` (local folder or hub id), or built from
    ``source.config`` (vocabulary and special tokens taken from ``tokenizer``) with weights
    initialized under ``seed``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.path:
        return AutoModelForCausalLM.from_pretrained(source.path)
    fields = dict(source.config)
    if "model_type" not in fields:
        raise ValueError("a model built from a config needs config.model_type (e.g. llama, gpt2)")
    fields.setdefault("vocab_size", len(tokenizer))  # larger: an embedding padded past the tokenizer
    config = AutoConfig.for_model(fields.pop("model_type"), pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **fields)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


class CausalLM(nn.Module):
    """``forward`` returns logits, or the final hidden states (what the output layer reads)
    when ``hidden=True``; ``output_weight`` is that layer's weight. The fused path assumes
    ``logits = hidden @ output_weight.T`` (Llama, GPT-2, Qwen, Mistral; a test checks it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False) -> Tensor:
        if hidden:
            return self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    @property
    def output_weight(self) -> Tensor:
        return self.model.get_output_embeddings().weight

    @property
    def output_bias(self) -> Optional[Tensor]:
        return getattr(self.model.get_output_embeddings(), "bias", None)
