"""Trained models as Hugging Face folders: what every LM command writes for each model it trains
(``output_dir/models/<run>/``), loadable by ``AutoModelForCausalLM.from_pretrained``, by vLLM and
by any tool that reads a ``save_pretrained`` folder; and the export of a run's checkpoints into
such folders (``divreg export RUN_DIR``), for a run that was stopped or an earlier checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import torch

from ._causal_lm import CausalLM

MARKER = "divreg_model.json"  # in a model folder: which checkpoint it comes from, and whether it holds the weights


def save_model_folder(model, tokenizer, path: str, *, checkpoint: Optional[str] = None, weights: bool = True) -> str:
    """Write ``model`` (a :class:`CausalLM` or a ``transformers`` model) and ``tokenizer`` to the
    folder ``path`` with ``save_pretrained``: ``config.json``, ``generation_config.json``, the
    weights as safetensors (unless ``weights=False``: the folder's skeleton, which ``divreg
    export`` completes from ``checkpoint``) and the tokenizer files, plus ``divreg_model.json``
    naming the checkpoint. A LoRA model (``peft``) is written as the model with its adapters
    merged in (a plain model any tool loads) and its adapter alone in ``path/adapter/``. Written to a staging folder beside ``path`` and renamed over it, so a
    reader never sees half a folder.

    Example:
        >>> import tempfile, torch
        >>> from transformers import AutoModelForCausalLM
        >>> from divreg.data import char_tokenizer
        >>> from divreg.models import CausalLM, ModelSource, build_causal_lm, tiny_llama
        >>> tokenizer = char_tokenizer()
        >>> model = CausalLM(build_causal_lm(ModelSource(config=tiny_llama()), tokenizer, seed=0))
        >>> folder = save_model_folder(model, tokenizer, tempfile.mkdtemp() + "/policy")
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> loaded = AutoModelForCausalLM.from_pretrained(folder)
        >>> bool(torch.equal(loaded(ids).logits, model.model(ids).logits))
        True
    """
    hf_model = model.model if isinstance(model, CausalLM) else model  # (a peft model's .model is its base)
    adapted = hasattr(hf_model, "merge_adapter")  # LoRA (peft): the merged model, and the adapter in adapter/
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.saving-", dir=os.path.dirname(path))
    try:
        if weights and adapted:
            hf_model.save_pretrained(os.path.join(staging, "adapter"), safe_serialization=True)
            _save_merged(hf_model, staging)
        elif weights:
            hf_model.save_pretrained(staging, safe_serialization=True)
        else:
            base = hf_model.get_base_model() if adapted else hf_model
            base.config.save_pretrained(staging)
            if getattr(base, "generation_config", None) is not None:
                base.generation_config.save_pretrained(staging)
            if adapted:
                hf_model.peft_config["default"].save_pretrained(os.path.join(staging, "adapter"))
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, MARKER), "w") as handle:
            json.dump({"checkpoint": checkpoint, "weights": weights}, handle, indent=2)
        previous = None
        if os.path.exists(path):
            previous = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
            os.rename(path, os.path.join(previous, "folder"))
        os.rename(staging, path)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _save_merged(peft_model, folder: str) -> None:
    """The LoRA model's weights with the adapters merged in, saved as the plain base model (in place:
    merged, saved, unmerged; no copy of the model)."""
    base = peft_model.get_base_model()
    peft_model.merge_adapter()
    try:
        state = {key.replace(".base_layer.", "."): value for key, value in base.state_dict().items()
                 if ".lora_" not in key}
        base.save_pretrained(folder, state_dict=state, safe_serialization=True)
    finally:
        peft_model.unmerge_adapter()


def export_checkpoint(folder: str, checkpoint: Optional[str] = None) -> str:
    """Complete the model folder ``folder`` (written by :func:`save_model_folder`, with or without
    weights) with the weights of ``checkpoint`` (default: the one its ``divreg_model.json``
    names): a divreg run checkpoint whose ``model`` entry is the :class:`CausalLM` state. Returns
    the folder; a missing checkpoint or one of another architecture is a ``ValueError``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    marker = os.path.join(folder, MARKER)
    if checkpoint is None:
        if not os.path.isfile(marker):
            raise ValueError(f"{folder} has no {MARKER}: it is not a model folder of a divreg run")
        with open(marker) as handle:
            checkpoint = json.load(handle)["checkpoint"]
        if checkpoint is not None and not os.path.isabs(checkpoint):
            checkpoint = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(folder))), checkpoint)
    if checkpoint is None or not os.path.isfile(checkpoint):
        raise ValueError(f"{folder}: its checkpoint {checkpoint!r} does not exist (the run wrote none yet?)")
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: torch/pickle raise many kinds
        raise ValueError(f"{checkpoint} cannot be read as a checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:160] if str(error) else ''}); it may be truncated") from None
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"{checkpoint} is not a divreg run checkpoint (no 'model' entry)")
    state = {key[len("model."):]: value for key, value in saved["model"].items() if key.startswith("model.")}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    adapter = os.path.join(folder, "adapter")
    if os.path.isfile(os.path.join(adapter, "adapter_config.json")):  # a LoRA run: the checkpoint holds the adapters
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig.from_pretrained(adapter))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint} does not hold the weights of the model in {folder}: "
                         f"{str(error).splitlines()[0]}") from None
    if os.path.isfile(os.path.join(folder, "generation_config.json")):
        from transformers import GenerationConfig

        (model.get_base_model() if hasattr(model, "get_base_model") else model).generation_config = \
            GenerationConfig.from_pretrained(folder)
    relative = os.path.relpath(checkpoint, os.path.dirname(os.path.dirname(os.path.abspath(folder))))
    return save_model_folder(model, AutoTokenizer.from_pretrained(folder), folder, checkpoint=relative)
