"""The engine options of the LM recipes (:class:`divreg.recipes._blocks.EngineBlock`) applied to
their models: the trained model gets gradient checkpointing when asked; a frozen reference or
teacher runs under the same bf16 autocast as the trained model when ``precision=bf16``."""

from __future__ import annotations

import torch

from ..models import CausalLM, ModelSource, add_lora, build_causal_lm
from ..regularizers import apply_half_fine_tuning, half_fine_tuning_mask
from ..training import is_fsdp


def trainable(model: CausalLM, config, lora: bool = True, seed: int = 0) -> CausalLM:
    """``model`` (about to be trained) with the engine options: non-reentrant gradient
    checkpointing of every decoder layer when ``config.gradient_checkpointing``; LoRA adapters
    when ``config.lora`` (and ``lora``: a supervised warm-up trains the full model), initialized
    under ``seed``; with ``config.half_fine_tuning`` (and ``lora``: the stage after a warm-up), a
    random half of the decoder layers' parameters frozen, drawn from ``seed`` (the same mask on
    resume)."""
    if config.gradient_checkpointing:
        if not getattr(model.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"gradient_checkpointing=true: this {type(model.model).__name__} does not support "
                             "transformers' gradient checkpointing; set gradient_checkpointing=false")
        if hasattr(model.model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
            model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora and getattr(config, "half_fine_tuning", False):
        apply_half_fine_tuning(model.model, seed)  # its own stream (Python's random), not torch's
    if lora and config.lora is not None:
        model = add_lora(model, config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.target_modules,
                         seed=seed)
    return model


def check_trainable(config, source: ModelSource, tokenizer) -> None:
    """Before anything trains: the engine options that depend on the model's architecture hold for
    the model ``source`` names (``half_fine_tuning``: Llama-style layer names), checked on a
    skeleton built on the meta device (no weights read, no memory)."""
    if not getattr(config, "half_fine_tuning", False):
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = (AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source.path)) if source.path
                 else build_causal_lm(source, tokenizer, 0))
    try:
        half_fine_tuning_mask(model, 0)
    except ValueError as error:
        raise ValueError(f"half_fine_tuning=true: {error}") from None


def build_policy(source: ModelSource, tokenizer, seed: int, config, state=None, lora: bool = True) -> CausalLM:
    """The policy of ``rl`` and ``preference``: built (or loaded) under ``seed``, the warm-up's
    ``state`` loaded before any LoRA adapters are added, then :func:`trainable` (``lora=False``:
    the supervised warm-up trains the full model)."""
    model = CausalLM(build_causal_lm(source, tokenizer, seed), len(tokenizer))
    if state is not None:
        model.load_state_dict(state)
    return trainable(model, config, lora=lora, seed=seed)


def frozen(model: CausalLM, config, accelerator) -> CausalLM:
    """``model`` as a frozen reference or teacher: eval mode, no gradients, on the run's device,
    and under bf16 autocast (its forward wrapped in place by Accelerate) when
    ``config.precision == "bf16"``."""
    model = model.eval().requires_grad_(False).to(accelerator.device)
    if config.precision == "bf16":
        autocast_bf16(model, accelerator)
    return model


def autocast_bf16(model: CausalLM, accelerator) -> CausalLM:
    """``model``'s forward (in place) under the run's bf16 autocast, its outputs in fp32: what
    Accelerate's ``prepare_model(evaluation_mode=True)`` does, done by hand under FSDP (where
    ``prepare_model`` would shard the frozen model too: a frozen teacher or reference stays
    whole, one copy per process)."""
    if not is_fsdp(accelerator):
        return accelerator.prepare_model(model, evaluation_mode=True)
    from accelerate.utils import convert_outputs_to_fp32

    forward = model.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    model.forward = convert_outputs_to_fp32(autocast_forward)
    return model
