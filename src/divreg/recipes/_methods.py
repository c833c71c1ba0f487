"""Recipe methods are data: each method of a recipe is a structured entry (a dataclass per
recipe: ``name``, ``divergence``, ``divergence_options``, ``weight``, ...), written in YAML as a
mapping or, for the common cases, as a short string. One parser serves every recipe."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import merge_replacing
from ..divergences import DIVERGENCES, check_divergence_options, get_divergence

MethodT = TypeVar("MethodT")

# Short names accepted for a divergence in a method's shorthand, besides the registered names.
DIVERGENCE_ALIASES = {"jsd": "generalized_jsd", "tv": "total_variation", "alpha": "alpha_divergence",
                      "topk": "topk_kl"}


def divergence_name(name: str) -> str:
    """The registered divergence a short name stands for (``jsd`` -> ``generalized_jsd``)."""
    return DIVERGENCE_ALIASES.get(name, name)


def check_divergence(where: str, name: str, options: Mapping[str, Any]) -> None:
    """``ValueError`` naming ``where`` unless ``name`` is a divergence that accepts ``options``
    (checked by evaluating it once on tiny logits, so a missing, unknown or out-of-range option
    stops the run before any training)."""
    if name not in DIVERGENCES:
        raise ValueError(f"{where}: unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)} "
                         f"(or a short name: {sorted(DIVERGENCE_ALIASES)})")
    try:
        check_divergence_options(name, dict(options))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    vocab = 8 + int(options.get("k", 0)) if isinstance(options.get("k", 0), int) else 8
    try:
        get_divergence(name).on_logits(torch.zeros(1, vocab), torch.zeros(1, vocab), **options)
    except TypeError as error:
        raise ValueError(f"{where}: divergence {name!r} does not take divergence_options {dict(options)} "
                         f"({error})") from error
    except ValueError as error:
        raise ValueError(f"{where}: divergence_options {dict(options)} of {name!r}: {error}") from error


def parse_methods(entries: Sequence[Any], schema: type[MethodT], shorthand: Callable[[str], dict]) -> list[MethodT]:
    """``schema`` instances from config entries: a string (``shorthand(string)`` gives its
    fields), a mapping (merged onto the schema's defaults; types checked, unknown keys named),
    or an instance already. Names must be distinct."""
    if not entries:
        raise ValueError("methods must list at least one method")
    methods = []
    for index, entry in enumerate(entries):
        if isinstance(entry, schema):
            methods.append(entry)
            continue
        fields = shorthand(entry) if isinstance(entry, str) else entry
        if not isinstance(fields, Mapping) and not OmegaConf.is_dict(fields):
            raise ValueError(f"methods[{index}]: expected a name or a mapping, got {entry!r}")
        try:
            merged = merge_replacing(OmegaConf.structured(schema), fields)
            methods.append(OmegaConf.to_object(merged))
        except OmegaConfBaseException as error:
            message = (getattr(error, "msg", None) or str(error)).splitlines()[0]
            raise ValueError(f"methods[{index}] ({entry!r}): {message}") from error
    names = [method.name for method in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"methods: names must be distinct, got {names}")
    return methods


def as_mapping(method) -> dict:
    """A method entry as a plain mapping (what the config file shows)."""
    return dataclasses.asdict(method)
