r"""Half Fine-Tuning (HFT): freeze a random half of a transformer's parameters for a fine-tuning
stage (Hui, Zhang, Wang, Xu, Sun and Wu, "HFT: Half Fine-Tuning for Large Language Models",
2024, arXiv 2404.18466, ACL 2025; no official code was found; the selection below is the paper's
"category-level" one as its method section and a third-party reimplementation,
``gucci-j/ssu`` ``_freeze_hft_parameters``, describe it).

Per decoder layer, drawn independently from the seed:

- attention: 2 of the 4 projections :math:`W_Q, W_K, W_V, W_O` frozen;
- feed-forward: in a random half of the layers (``L // 2`` of them) 2 of the 3 matrices
  :math:`W_{gate}, W_{up}, W_{down}` frozen, 1 in the others (1.5 of 3 on average);
- norms: 1 of the 2 (before attention, before the MLP) frozen;
- embeddings, the final norm and the output layer stay trainable.

Frozen means no gradient and no update (``requires_grad=False``: the optimizer skips them, weight
decay included). The paper reads this as the constrained problem
:math:`\min_\theta \max_\lambda L(\theta) + \lambda \|(I - M)(\theta - \theta^0)\|^2`, the frozen
half held at its values from the previous stage, :math:`\theta^0`. The mask is a function of the
seed and the parameter names only, so a resumed run rebuilds the same one; draw a new seed per
stage (the paper redraws the half at each stage). Departures: models other than Llama-style
naming (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``; Llama, Mistral, Qwen2, Gemma...) are refused with the names found,
not guessed at; grouped-query K/V projections count as one matrix each, as in the paper's count.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from torch import nn

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FEED_FORWARD = ("gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class HalfMask:
    """The frozen parameters of one HFT stage: their names, and the share of the layers' parameters frozen."""

    frozen: list[str]
    frozen_share: float  # of the decoder layers' parameters (by count)


def half_fine_tuning_mask(model: nn.Module, seed: int) -> HalfMask:
    """The parameters HFT freezes in ``model`` for the stage drawn with ``seed`` (see the module
    docstring); raises ``ValueError`` when the model's layers do not have Llama-style names.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                                      num_hidden_layers=2, num_attention_heads=4))
        >>> mask = half_fine_tuning_mask(model, seed=0)
        >>> sum(".self_attn." in name for name in mask.frozen)  # 2 of 4 projections in each of 2 layers
        4
    """
    names = [name for name, _ in model.named_parameters()]
    layers: dict[int, list[str]] = {}
    for name in names:
        found = _LAYER.search(name)
        if found:
            layers.setdefault(int(found.group(1)), []).append(name)
    if not layers:
        raise ValueError("half fine-tuning needs decoder layers named like Llama's (`...layers.<i>.self_attn.q_proj`, "
                         f"`mlp.gate_proj`, `input_layernorm`); found none among e.g. {names[:4]}")
    rng = random.Random(seed)
    indices = sorted(layers)
    two_ffn = set(rng.sample(indices, len(indices) // 2))
    frozen: list[str] = []
    for index in indices:
        members = layers[index]

        def having(part: str) -> list[str]:
            return [n for n in members if re.search(rf"\.{part}(\.|$)", n)]

        missing = [part for part in ATTENTION + FEED_FORWARD + NORMS if not having(part)]
        if missing:
            raise ValueError(f"half fine-tuning: layer {index} has no {missing} (Llama-style names expected; its "
                             f"parameters: {[n.split(f'layers.{index}.')[-1] for n in members][:8]})")
        chosen = rng.sample(ATTENTION, 2) + rng.sample(FEED_FORWARD, 2 if index in two_ffn else 1) \
            + rng.sample(NORMS, 1)
        for part in chosen:
            frozen += having(part)
    sizes = dict((name, p.numel()) for name, p in model.named_parameters())
    in_layers = sum(sizes[n] for members in layers.values() for n in members)
    return HalfMask(sorted(frozen), sum(sizes[n] for n in frozen) / in_layers)


def apply_half_fine_tuning(model: nn.Module, seed: int) -> HalfMask:
    """Freeze (``requires_grad_(False)``) the parameters :func:`half_fine_tuning_mask` draws for
    ``seed``; returns the mask.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                                      num_hidden_layers=4, num_attention_heads=4))
        >>> mask = apply_half_fine_tuning(model, seed=0)
        >>> sum(not p.requires_grad for p in model.parameters()) == len(mask.frozen)
        True
    """
    mask = half_fine_tuning_mask(model, seed)
    parameters = dict(model.named_parameters())
    for name in mask.frozen:
        parameters[name].requires_grad_(False)
    return mask
