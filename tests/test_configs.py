"""Every shipped config loads and validates against its command's dataclass, names only keys
the dataclass has, and round-trips through the resolved config.yaml a run writes."""

import os

import pytest
import yaml

from divreg.cli import COMMANDS
from divreg.config import load_config, to_yaml

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
# configs/accelerate holds launcher configs (accelerate launch --config_file ...), not a command's
LAUNCHER_FOLDERS = {"accelerate"}
SHIPPED = [(command, name) for command in sorted(set(os.listdir(ROOT)) - LAUNCHER_FOLDERS)
           for name in sorted(os.listdir(os.path.join(ROOT, command)))]


def test_the_fsdp_launcher_config_is_fsdp2_with_full_state_dicts():
    """What divreg's FSDP support requires of it (the launcher refuses the rest, tests/recipes/test_fsdp.py)."""
    with open(os.path.join(ROOT, "accelerate", "fsdp.yaml")) as handle:
        config = yaml.safe_load(handle)
    assert config["distributed_type"] == "FSDP" and config["mixed_precision"] == "no"
    assert config["fsdp_config"]["fsdp_version"] == 2
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert config["fsdp_config"]["fsdp_activation_checkpointing"] is False


def test_every_command_has_configs_and_every_config_folder_is_a_command():
    assert {command for command, _ in SHIPPED} == set(COMMANDS)


@pytest.mark.parametrize("command,name", SHIPPED)
def test_shipped_config_loads_validates_and_round_trips(command, name, tmp_path):
    schema, run = COMMANDS[command].load()
    assert callable(run)
    path = os.path.join(ROOT, command, name)
    config = load_config(schema, path)
    with open(path) as handle:
        written = yaml.safe_load(handle)
    assert all(hasattr(config, key) for key in written), path
    resolved = tmp_path / "config.yaml"
    resolved.write_text(to_yaml(config))
    assert load_config(schema, str(resolved)) == config


@pytest.mark.parametrize("command,name", [("demo", "digits.yaml"), ("distill-classifier", "digits.yaml"),
                                          ("distill-lm", "builtin.yaml"),
                                          ("preference", "builtin.yaml")])
def test_the_spelled_out_defaults_are_the_defaults(command, name):
    """The configs that spell out a command's defaults (what `make demo` runs) do not drift."""
    schema, _ = COMMANDS[command].load()
    assert load_config(schema, os.path.join(ROOT, command, name)) == load_config(schema, None)


# --- A mapping the user gives replaces the default mapping (never merges with it) ---------------

def _mapping_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of ``schema`` whose value is a mapping (dict-typed), in dataclass blocks
    at any depth (optional blocks included)."""
    import dataclasses
    import typing

    hints, keys = typing.get_type_hints(schema), []
    for field in dataclasses.fields(schema):
        kind = hints[field.name]
        if typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if dataclasses.is_dataclass(kind):
            keys += _mapping_keys(kind, f"{prefix}{field.name}.")
        elif kind is dict or typing.get_origin(kind) is dict:
            keys.append(f"{prefix}{field.name}")
    return keys


_GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2}
_LLAMA = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2}
# (command, dict key) -> (a mapping for a YAML file, another for the command line, a new entry as
# key=value, other overrides the mapping needs to be valid). The two mappings share no key.
MAPPINGS = {
    ("distill-lm", "teacher.config"): (_GPT2, _LLAMA, "rope_theta=500.0", []),
    ("distill-lm", "student.config"): (_GPT2, _LLAMA, "rope_theta=500.0", []),
    ("rl", "policy.config"): (_GPT2, _LLAMA, "rope_theta=500.0", []),
    ("rl", "reference.config"): (_GPT2, _LLAMA, "rope_theta=500.0", ["reference_warmup_steps=10"]),
    ("rl", "rewards"): ({"format": 1.0}, {"exact_match": 0.5}, "format=0.25", []),
    ("preference", "policy.config"): (_GPT2, _LLAMA, "rope_theta=500.0", []),
    ("preference", "losses"): ({"ipo": 1.0}, {"hinge": 0.5}, "ipo=0.25", []),
}


def _resolved(config, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.structured(config), key)


def _nested(key: str, value) -> dict:
    """``a.b`` and ``v`` -> ``{a: {b: v}}``: how a YAML file writes a dotted key."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def test_the_mapping_table_covers_every_mapping_key_of_every_command():
    found = {(name, key) for name, command in COMMANDS.items() for key in _mapping_keys(command.load()[0])}
    assert found == set(MAPPINGS)


@pytest.mark.parametrize("command,key", sorted(MAPPINGS))
def test_a_given_mapping_replaces_the_default(command, key, tmp_path):
    schema, _ = COMMANDS[command].load()
    in_file, on_line, entry, needs = MAPPINGS[(command, key)]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_nested(key, in_file)))
    # YAML alone, YAML then the command line, the command line alone: exactly what was given last
    assert dict(_resolved(load_config(schema, str(path), needs), key)) == in_file
    inline = "{" + ", ".join(f"{k}: {v}" for k, v in on_line.items()) + "}"
    assert dict(_resolved(load_config(schema, str(path), [*needs, f"{key}={inline}"]), key)) == on_line
    assert dict(_resolved(load_config(schema, None, [*needs, f"{key}={inline}"]), key)) == on_line
    # a dotted key still overrides (adds) one entry of the default, or of the given mapping
    default = dict(_resolved(load_config(schema, None), key) or {})  # an unset optional block: its mapping is {}
    name, value = entry.split("=")
    added = load_config(schema, None, [*needs, f"{key}.{entry}"])
    assert dict(_resolved(added, key)) == {**default, name: yaml.safe_load(value)}
    added = load_config(schema, str(path), [*needs, f"{key}.{entry}"])
    assert dict(_resolved(added, key)) == {**in_file, name: yaml.safe_load(value)}
    # a block given as a mapping on the command line still merges field by field, its mapping replaced
    if "." in key:
        block, leaf = key.rsplit(".", 1)
        given = load_config(schema, None, [*needs, f"{block}={{{leaf}: {inline}}}"])
        assert dict(_resolved(given, key)) == on_line


def _assert_says(resolved, written, where: str) -> None:
    """Every key the file writes has exactly the file's value in the resolved config (a mapping
    under a mapping key: the same mapping; a block: each key it writes)."""
    for name, value in written.items():
        here = f"{where}.{name}" if where else name
        if isinstance(value, dict) and isinstance(resolved[name], dict) and set(resolved[name]) != set(value) \
                and here.rsplit(".", 1)[-1] not in ("config", "losses", "rewards"):
            _assert_says(resolved[name], value, here)  # a block: the keys it writes
        else:
            assert resolved[name] == value, f"{here}: the file says {value!r}, the resolved config {resolved[name]!r}"


@pytest.mark.parametrize("command,name", SHIPPED)
def test_every_shipped_config_resolves_to_what_its_file_says(command, name):
    schema, _ = COMMANDS[command].load()
    path = os.path.join(ROOT, command, name)
    resolved = yaml.safe_load(to_yaml(load_config(schema, path)))
    with open(path) as handle:
        written = yaml.safe_load(handle)
    if "methods" in written:  # shorthand names resolve to full method mappings: compared by name
        names = [m if isinstance(m, str) else m["name"] for m in written.pop("methods")]
        assert [m if isinstance(m, str) else m["name"] for m in resolved.pop("methods")] == names
    _assert_says(resolved, written, "")


def test_overrides_keep_interpolations_spaces_and_refuse_list_entries_by_index():
    rl, _ = COMMANDS["rl"].load()
    config = load_config(rl, None, ["lr=0.001", "warmup_lr=${lr}", "policy.config.hidden_size=${digits}"])
    assert config.warmup_lr == 0.001 and config.policy.config["hidden_size"] == config.digits
    lm, _ = COMMANDS["distill-lm"].load()
    assert load_config(lm, None, ["teacher.config=${student.config}"]).teacher.config == \
        load_config(lm, None).student.config  # an interpolated mapping: the other mapping, whole
    assert load_config(rl, None, ["rewards = {exact_match: 0.5}"]).rewards == {"exact_match": 0.5}
    with pytest.raises(ValueError, match=r"give a list as a whole \(`methods=\[...\]`\)"):
        load_config(lm, None, ["methods.0.weight=1"])
