"""Configs: dataclass defaults in code, optionally a YAML file, then ``key=value`` overrides,
merged and type-checked by OmegaConf.

A mapping the user gives *replaces* the default mapping (``losses: {ipo: 1.0}`` trains IPO
alone; ``student: {config: {model_type: gpt2, ...}}`` in YAML or ``student.config={...}`` on the
command line builds that model and nothing of the default one); OmegaConf's merge would merge the
two. One entry of a default mapping is overridden with a
dotted key (``losses.ipo=0.5``). Dataclass blocks (``student``, ``policy``) still merge field by
field: ``student: {path: ./my-model}`` keeps the block's other defaults."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Optional, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
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
    overrides = ["=".join(part.strip() for part in item.split("=", 1)) for item in overrides]  # `key = value`
    try:
        merged = OmegaConf.structured(schema)
        if config_path is not None:
            if not os.path.isfile(config_path):
                raise ValueError(f"config file {config_path!r} does not exist")
            try:
                loaded = OmegaConf.load(config_path)
            except OSError as error:  # OmegaConf's answer to a document that is a scalar ("Invalid loaded object type")
                raise ValueError(f"config file {config_path!r}: holds no mapping of keys "
                                 f"({' '.join(str(error).split())[:80]}); write it as `key: value` lines") from None
            except UnicodeDecodeError as error:
                raise ValueError(f"config file {config_path!r}: not UTF-8 text (byte at offset {error.start}); save it "
                                 "as a UTF-8 YAML file") from None
            except yaml.YAMLError as error:
                where = getattr(error, "problem_mark", None)
                line = f", line {where.line + 1}" if where is not None else ""
                problem = " ".join(str(getattr(error, "problem", None) or error).split())  # one line
                raise ValueError(f"config file {config_path!r}{line}: not valid YAML ({problem})") from None
            if not isinstance(loaded, DictConfig):
                raise ValueError(f"config file {config_path!r}: holds a {type(loaded).__name__.replace('Config', '').lower()}"
                                 ", not a mapping of keys; write it as `key: value` lines")
            _refuse_renamed(schema, list(loaded.keys()), config_path)
            try:
                merged = merge_replacing(merged, loaded)
            except OmegaConfBaseException as error:  # an unknown key or a wrong type in the file: name the file
                raise ValueError(f"config file {config_path!r}: {_invalid_key(error)}") from None
            except TypeError as error:  # a mapping where the schema has a list, or the reverse
                raise ValueError(f"config file {config_path!r}: a value does not fit its key ({str(error).splitlines()[0]}):"
                                 " give lists as lists (`seeds: [0, 1]`) and blocks as mappings") from None
        _refuse_renamed(schema, [item.split("=", 1)[0].split(".")[0] for item in overrides], None)
        for item in overrides:  # one at a time: a later one wins, and each replaces only what it names
            given = OmegaConf.from_dotlist([item])
            _refuse_scalar_for_block(merged, given, item.split("=", 1)[0].strip())
            merged = OmegaConf.merge(merged, given)
            key = item.split("=", 1)[0].strip()
            # the given value unresolved: an interpolation (`lr=${warmup_lr}`) resolves against the whole config
            node = OmegaConf.select(merged, key, throw_on_resolution_failure=False)
            value = OmegaConf.select(given, key, throw_on_resolution_failure=False)
            if _is_mapping(value) and isinstance(node, DictConfig):
                if _is_block(node):
                    _replace_mappings(node, value)
                else:
                    OmegaConf.update(merged, key, value, merge=False)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        if (getattr(error, "full_key", None) or getattr(error, "key", None)) is None:  # e.g. a check of the dataclass
            where = f" (config file {config_path!r} and the overrides)" if config_path is not None else ""
            message = " ".join((getattr(error, "msg", None) or str(error)).split())
            raise ValueError(f"invalid config{where}: {message}") from error
        raise ValueError(_invalid_key(error)) from error
    except TypeError as error:  # OmegaConf merging a mapping into a list (`methods.0.weight=1`, a top-level list)
        raise ValueError(f"the config cannot be merged ({str(error).splitlines()[0]}): give a list as a whole "
                         "(`methods=[...]`), not one entry by index, and a config file as a mapping of keys") from None


def _invalid_key(error: OmegaConfBaseException) -> str:
    """``invalid config key 'KEY': WHAT`` from OmegaConf's error (its first line)."""
    key = getattr(error, "full_key", None) or getattr(error, "key", None)
    message = (getattr(error, "msg", None) or str(error)).splitlines()[0]
    return f"invalid config key {key!r}: {message}"


def _refuse_renamed(schema: type, keys: list, path: Optional[str]) -> None:
    """``ValueError`` naming the new key for a key the schema renamed (its ``RENAMED`` mapping)."""
    renamed = getattr(schema, "RENAMED", {})
    for key in keys:
        if key in renamed:
            where = f" (in {path})" if path else ""
            raise ValueError(f"config key {key!r}{where} was renamed: use {renamed[key]}")


def _refuse_scalar_for_block(merged: DictConfig, given: DictConfig, key: str) -> None:
    """``ValueError`` for ``block=value`` where ``block`` is a dataclass block (``teacher=./folder``
    where ``teacher.path=./folder`` is meant), naming the block's keys."""
    node = OmegaConf.select(merged, key, throw_on_resolution_failure=False)
    value = OmegaConf.select(given, key, throw_on_resolution_failure=False)
    if (isinstance(node, DictConfig) and not node._is_none() and _is_block(node) and value is not None
            and not isinstance(value, DictConfig)):
        fields = list(node.keys())
        hint = f"{key}.{fields[0]}={value}" if fields else f"{key}.<field>=..."
        raise ValueError(f"{key} is a block of keys ({', '.join(fields)}), not a value: set one of them, e.g. {hint}")


def _is_mapping(node) -> bool:
    return isinstance(node, DictConfig) and not node._is_none() and not node._is_missing()


def _is_block(node: DictConfig) -> bool:
    """A dataclass block (merged field by field), not a plain mapping (replaced whole)."""
    return dataclasses.is_dataclass(OmegaConf.get_type(node))


def merge_replacing(base, given):
    """``OmegaConf.merge(base, given)``, except that each plain mapping ``given`` holds replaces
    the one in ``base`` instead of merging with it (dataclass blocks still merge field by field)."""
    merged = OmegaConf.merge(base, given)
    _replace_mappings(merged, given if isinstance(given, DictConfig) else OmegaConf.create(given))
    return merged


def _replace_mappings(merged: DictConfig, given: DictConfig) -> None:
    """After ``OmegaConf.merge(merged, given)``: every plain mapping of ``given`` is put in
    ``merged`` as given (the merge had merged it with the default mapping), in dataclass blocks
    at any depth; typed mappings keep their validation (``Dict[str, float]``)."""
    for key in given:
        value, node = given._get_node(key), merged._get_node(key)
        if not _is_mapping(value) or not isinstance(node, DictConfig) or node._is_none():
            continue
        if _is_block(node):
            _replace_mappings(node, value)
        else:
            merged[key] = value


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
