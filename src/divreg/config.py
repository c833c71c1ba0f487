"""Configs: dataclass defaults in code, optionally a YAML file, then ``key=value`` overrides,
merged and type-checked by OmegaConf."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Optional, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

ConfigT = TypeVar("ConfigT")


def load_config(schema: type[ConfigT], config_path: Optional[str] = None, overrides: Iterable[str] = ()) -> ConfigT:
    """Build a ``schema`` dataclass from its defaults, a YAML file, then ``key=value`` overrides.

    Unknown keys, wrong types and values rejected by the dataclass's ``__post_init__`` raise
    ``ValueError`` naming the key.
    """
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
    try:
        merged = OmegaConf.structured(schema)
        if config_path is not None:
            if not os.path.isfile(config_path):
                raise ValueError(f"config file {config_path!r} does not exist")
            try:
                loaded = OmegaConf.load(config_path)
            except yaml.YAMLError as error:
                where = getattr(error, "problem_mark", None)
                line = f", line {where.line + 1}" if where is not None else ""
                raise ValueError(f"config file {config_path!r}{line}: not valid YAML "
                                 f"({getattr(error, 'problem', None) or error})") from None
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", None)
        message = (getattr(error, "msg", None) or str(error)).splitlines()[0]
        raise ValueError(f"invalid config key {key!r}: {message}") from error


def to_yaml(config) -> str:
    """The fully resolved config as YAML."""
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"expected a dataclass config, got {type(config).__name__}")
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def require_positive(config, keys: Iterable[str]) -> None:
    """``ValueError`` naming the first of ``keys`` (dotted paths into ``config``) that is not > 0."""
    for key in keys:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value!r}")
