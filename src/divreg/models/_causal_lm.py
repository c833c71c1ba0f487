"""Causal LMs and tokenizers: loading (local folder or hub id), building from a config, and a
thin wrapper whose forward gives logits or hidden states (so DDP sees the fused path's forward)
and whose ``signal`` gives the next-token signal of a batch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..targets import DenseLogits, HiddenStates, tokenizer_fingerprint


@dataclass
class ModelSource:
    """Where a causal LM comes from: a local folder or hub id (``path``), else a ``transformers``
    config to build it from (``config``, with ``model_type``); ``tokenizer`` names the model's own
    tokenizer when it is not the run's."""
    path: Optional[str] = None  # local path or hub id of an AutoModelForCausalLM; None: build from `config`
    config: dict[str, Any] = field(default_factory=dict)  # transformers config fields (with model_type) to build from
    # this model's own tokenizer (path or hub id); None: the one its path ships (a folder with tokenizer files, or a
    # hub id), else the run's tokenizer
    tokenizer: Optional[str] = None


def _from_pretrained(load, name_or_path: str, what: str):
    """``load(name_or_path)``, with one clear line when it names no local folder and cannot be
    fetched (a mistyped path otherwise surfaces as the hub's "Repo id must be in the form ...")."""
    try:
        return load(name_or_path)
    except (OSError, ValueError) as error:
        if os.path.exists(name_or_path):
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{what} {name_or_path!r}: no such folder, and it could not be loaded as a hub id either "
                         f"({reason[:200]}); give an existing local folder or a hub id you can download") from None


def tiny_llama() -> dict[str, Any]:
    """The built-in policy's ``transformers`` config: a 2-layer Llama of width 96 (about 0.2M
    parameters with the task's 16-token vocabulary), built from scratch (nothing downloaded)."""
    return {"model_type": "llama", "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 192, "max_position_embeddings": 32,
            "tie_word_embeddings": True}


def load_tokenizer(name_or_path: str):
    """A tokenizer from a local folder or hub id, its pad token set to EOS when it has none; one
    clear line when the path is neither, and an error when it has no EOS token."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no EOS token")
    return tokenizer


# Files by which a model folder ships its own tokenizer (any one of them).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def own_tokenizer(source: ModelSource) -> Optional[str]:
    """Where the tokenizer of the model of ``source`` is, without loading it: ``source.tokenizer``
    when given; else ``source.path`` when that is a local folder holding tokenizer files or a hub
    id (whose repositories ship one); else None (a model built from a config, or a folder of
    weights alone).

    Example:
        >>> own_tokenizer(ModelSource(path="org/model")), own_tokenizer(ModelSource(config={"model_type": "llama"}))
        ('org/model', None)
    """
    if source.tokenizer:
        return source.tokenizer
    if source.path and (not os.path.isdir(source.path)
                        or any(os.path.exists(os.path.join(source.path, f)) for f in _TOKENIZER_FILES)):
        return source.path
    return None


def model_tokenizer(source: ModelSource, run_tokenizer):
    """The tokenizer the model of ``source`` reads: ``source.tokenizer`` when given; else the
    tokenizer its folder ships (``source.path`` a local folder holding tokenizer files, or a hub
    id, whose repositories ship one); else the run's. Returns ``run_tokenizer`` itself when the
    two are the same tokenizer by fingerprint (vocabulary and special tokens), so callers can
    compare with ``is``; otherwise the model's own, for the vocabulary policy to accept (ULD) or
    refuse. Without this, a teacher folder with its own 1024-token tokenizer, run with a
    300-token ``tokenizer=``, would have its logits silently cut to the first 300 columns."""
    where = own_tokenizer(source)
    if where is None:
        return run_tokenizer
    own = load_tokenizer(where)
    return run_tokenizer if tokenizer_fingerprint(own) == tokenizer_fingerprint(run_tokenizer) else own


def build_causal_lm(source: ModelSource, tokenizer, seed: int):
    """``AutoModelForCausalLM`` from ``source.path`` (local folder or hub id), or built from
    ``source.config`` (vocabulary and special tokens taken from ``tokenizer``) with weights
    initialized under ``seed``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.path:
        return _from_pretrained(AutoModelForCausalLM.from_pretrained, source.path, "model")
    fields = dict(source.config)
    if "model_type" not in fields:
        raise ValueError("a model built from a config needs config.model_type (e.g. llama, gpt2)")
    fields.setdefault("vocab_size", len(tokenizer))  # larger: an embedding padded past the tokenizer
    config = AutoConfig.for_model(fields.pop("model_type"), pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **fields)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def cache_keyword(model) -> str:
    """The name of the KV-cache argument of ``model``'s forward: ``cache`` in transformers 5,
    ``past_key_values`` in 4.x (a peft model forwards it to its base model)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and values, in name order): which
    weights these are, whatever folder or path they were loaded from. Reads every weight once
    (about a second per GB)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # (numel,): 0-dim buffers too
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


class CausalLM(nn.Module):
    """``forward`` returns logits, or the final hidden states (what the output layer reads)
    when ``hidden=True``; ``output_weight`` is that layer's weight. The fused path assumes
    ``logits = hidden @ output_weight.T`` (Llama, GPT-2, Qwen, Mistral; a test checks it).

    ``vocab_size`` (the size of the model's tokenizer) is where the vocabulary policy acts once
    for every consumer: logits, output weight and bias keep only the first ``vocab_size`` rows,
    so the rows of an embedding padded past the tokenizer (e.g. 152064 rows for 151936 tokens)
    are never trained on, compared, evaluated or sampled. None keeps every row."""

    def __init__(self, model, vocab_size: Optional[int] = None):
        super().__init__()
        self.model = model
        rows = model.get_output_embeddings().weight.shape[0]
        if vocab_size is not None and not 0 < vocab_size <= rows:
            raise ValueError(f"the model has {rows} output rows, fewer than the {vocab_size} tokens of its "
                             "tokenizer: it cannot predict every token; give the model that goes with this tokenizer")
        self.vocab_size = rows if vocab_size is None else vocab_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False) -> Tensor:
        if hidden:  # the transformer body (under LoRA: the adapted model's own body, adapters active)
            body = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            return body.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                   use_cache=False).last_hidden_state  # (no KV cache built for a scoring pass)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[..., : self.vocab_size]

    def head_transform(self) -> tuple[Optional[float], Optional[float]]:
        """``(logit_scale, softcap)`` of the model's output head, from its config: Gemma 2/3's
        ``final_logit_softcapping`` (``c tanh(z / c)``), Cohere's ``logit_scale`` (``s z``),
        Granite's ``logits_scaling`` (``z / s``, the scale ``1 / s``); ``(None, None)`` for a
        plain head. The hidden-state signal carries it, so the fused path computes the model's
        own logits."""
        config = getattr(self.model, "config", None)
        softcap = getattr(config, "final_logit_softcapping", None)
        scale = getattr(config, "logit_scale", None)
        scaling = getattr(config, "logits_scaling", None)
        if scaling is not None and scaling != 1.0:
            scale = (scale or 1.0) / scaling
        return (None if scale in (None, 1.0) else float(scale), None if softcap is None else float(softcap))

    def checkpointing_in_eval(self) -> "CausalLM":
        """After ``eval()`` (no dropout, as RL and preference scoring want): put the decoder layers
        back in training mode when gradient checkpointing is on, so that it stays active
        (``transformers`` checkpoints a layer only in training mode); their children (attention,
        MLP, dropout) stay in eval mode, so nothing else changes. A no-op without checkpointing."""
        name = "is_activation_checkpointing" if hasattr(self.model, "is_activation_checkpointing") \
            else "is_gradient_checkpointing"  # transformers < 5.x
        if getattr(self.model, name, False):
            from transformers.modeling_layers import GradientCheckpointingLayer

            for module in self.model.modules():
                if isinstance(module, GradientCheckpointingLayer):
                    module.training = True
        return self

    @property
    def _no_split_modules(self) -> Optional[list[str]]:
        """The wrapped model's own (its decoder layer classes): what FSDP shards as units."""
        return getattr(self.model, "_no_split_modules", None)

    def generate(self, *args, **kwargs):
        """The wrapped model's ``generate``. Called through the wrapper so that, under FSDP (where
        the wrapper is the sharded root and this method is registered as one of its forward
        methods), the root's parameters are gathered for it as for ``forward``."""
        return self.model.generate(*args, **kwargs)

    @property
    def output_weight(self) -> Tensor:
        weight = self.model.get_output_embeddings().weight
        if _is_sharded(weight):
            raise RuntimeError("the output layer is sharded (FSDP) outside the model's forward: read output_weight "
                               "after a forward of the model (FSDP gathers it there, once per forward)")
        return weight[: self.vocab_size]

    @property
    def output_bias(self) -> Optional[Tensor]:
        bias = getattr(self.model.get_output_embeddings(), "bias", None)
        return None if bias is None else bias[: self.vocab_size]

    def signal(self, batch: dict[str, Tensor], hidden: bool = False) -> Union[DenseLogits, HiddenStates]:
        """The next-token signal of ``batch`` (see :func:`next_token_signal`)."""
        return next_token_signal(self, batch, hidden)


class AdaptersOff:
    """A LoRA-adapted :class:`CausalLM` seen with its adapters disabled: the model the adapters
    started from, as a frozen reference that shares the adapted model's weights (no second copy).
    Called like a :class:`CausalLM` (``(input_ids, attention_mask, hidden=False)``), always without
    gradients; ``output_weight``, ``output_bias`` and ``vocab_size`` are the adapted model's (the
    output layer is never adapted: :func:`divreg.models.add_lora` refuses it)."""

    def __init__(self, adapted: CausalLM):
        if not hasattr(adapted.model, "disable_adapter"):
            raise ValueError("AdaptersOff needs a model with LoRA adapters (peft)")
        self.adapted = adapted
        self.training = False

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, hidden: bool = False) -> Tensor:
        with torch.no_grad(), self.adapted.model.disable_adapter():
            return self.adapted(input_ids, attention_mask, hidden=hidden)

    def head_transform(self) -> tuple[Optional[float], Optional[float]]:
        """The adapted model's output head transform (the head is never adapted)."""
        return self.adapted.head_transform()

    def parameters(self):
        """The adapted model's parameters (where the reference's weights live: for their device)."""
        return self.adapted.parameters()

    @property
    def vocab_size(self) -> int:
        return self.adapted.vocab_size

    @property
    def output_weight(self) -> Tensor:
        return self.adapted.output_weight.detach()

    @property
    def output_bias(self) -> Optional[Tensor]:
        bias = self.adapted.output_bias
        return None if bias is None else bias.detach()


def add_lora(model: CausalLM, r: int, alpha: float, dropout: float, target_modules, seed: int = 0) -> CausalLM:
    """``model`` with LoRA adapters (``peft``: rank ``r``, scale ``alpha / r``, ``dropout`` on the
    adapters' input) on the modules named ``target_modules``; only the adapters train. Their
    initialization is drawn under ``seed`` (so a run and its resumed copy start alike). The output
    layer and the embeddings are refused as targets (the fused path and the adapters-off reference
    read the output layer as it was). A model peft cannot adapt, or targets it does not have, is a
    ``ValueError`` naming them.

    Example:
        >>> import torch
        >>> from divreg.data import char_tokenizer
        >>> from divreg.models import ModelSource, build_causal_lm, tiny_llama
        >>> model = CausalLM(build_causal_lm(ModelSource(config=tiny_llama()), char_tokenizer(), seed=0))
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> before = model(ids, torch.ones_like(ids))
        >>> adapted = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
        >>> bool(torch.equal(adapted(ids, torch.ones_like(ids)), before))  # LoRA's B starts at 0: the same model
        True
        >>> sum(p.numel() for p in adapted.parameters() if p.requires_grad) < 5000  # only the adapters train
        True
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ValueError("lora needs peft: pip install peft (or the project's 'lora' extra)") from error
    targets = list(target_modules)
    output = {name for name, module in model.model.named_modules()
              if module is model.model.get_output_embeddings() or module is model.model.get_input_embeddings()}
    if any(t in output or any(name.endswith(t) for name in output) for t in targets):
        raise ValueError(f"lora.target_modules {targets} names the output layer or the embeddings; adapt the "
                         "attention or MLP projections (e.g. q_proj, k_proj, v_proj, o_proj)")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.model = get_peft_model(model.model, config)
    except (ValueError, TypeError) as error:
        raise ValueError(f"lora: peft cannot adapt this {type(model.model).__name__} with target_modules={targets}: "
                         f"{str(error).splitlines()[0]}") from None
    return model


def _is_sharded(tensor: Tensor) -> bool:
    """An FSDP/DTensor shard rather than a whole tensor."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(tensor, DTensor)


def next_token_signal(model: nn.Module, batch: dict[str, Tensor], hidden: bool = False) -> Union[DenseLogits,
                                                                                                HiddenStates]:
    """What ``model`` (a :class:`CausalLM`, possibly wrapped by DDP: the call goes through the
    wrapper's forward) predicts at positions ``0 .. T-2`` of ``batch["input_ids"]`` (B, T), i.e.
    for tokens ``1 .. T-1``: :class:`DenseLogits` (B, T-1, V), or with ``hidden=True``
    :class:`HiddenStates` (B, T-1, H) with the output layer's weight and bias."""
    core = model.module if hasattr(model, "module") else model
    if hidden:
        states = model(batch["input_ids"], batch["attention_mask"], hidden=True)[:, :-1]  # (B, T-1, H)
        return HiddenStates(states, core.output_weight, core.output_bias, *core.head_transform())
    return DenseLogits(model(batch["input_ids"], batch["attention_mask"])[:, :-1])  # (B, T-1, V)
