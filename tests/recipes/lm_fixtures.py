"""Tiny tokenizers, models and examples for the LM tests (built in code, nothing downloaded)."""

from __future__ import annotations

import functools

import torch

from divreg.data import builtin_corpus, chunk_texts, train_bpe_tokenizer
from divreg.models import CausalLM, ModelSource, build_causal_lm

TINY_LLAMA = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 128,
              "tie_word_embeddings": False}


@functools.lru_cache(maxsize=None)
def tokenizer(vocab_size: int = 300):
    return train_bpe_tokenizer(builtin_corpus()[0][:20], vocab_size)


def examples(count: int = 24, seq_len: int = 24, prompt_len: int = 6, vocab_size: int = 300):
    return chunk_texts(builtin_corpus()[0][:20], tokenizer(vocab_size), seq_len, prompt_len)[:count]


def model(seed: int, vocab_size: int = 300, **overrides) -> CausalLM:
    config = {**TINY_LLAMA, **overrides}
    return CausalLM(build_causal_lm(ModelSource(config=config), tokenizer(vocab_size), seed))


def tiny_config_overrides(output_dir, **extra) -> list[str]:
    """Command-line overrides for a seconds-long distill-lm run."""
    base = {"output_dir": output_dir, "vocab_size": 300, "teacher_train_steps": 20, "steps": 8, "eval_every": 4,
            "eval_examples": 8, "batch_size": 8, "seq_len": 24, "prompt_len": 6, "max_new_tokens": 8,
            "checkpoint_every": 2, "teacher.config.hidden_size": 16, "teacher.config.intermediate_size": 32,
            "teacher.config.num_hidden_layers": 1, "student.config.hidden_size": 8,
            "student.config.intermediate_size": 16, **extra}
    return [f"{key}={value}" for key, value in base.items()]


def grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
