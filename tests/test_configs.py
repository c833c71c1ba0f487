"""Every shipped config loads and validates against its command's dataclass, names only keys
the dataclass has, and round-trips through the resolved config.yaml a run writes."""

import os

import pytest
import yaml

from divreg.cli import COMMANDS
from divreg.config import load_config, to_yaml

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
SHIPPED = [(command, name) for command in sorted(os.listdir(ROOT))
           for name in sorted(os.listdir(os.path.join(ROOT, command)))]


def test_every_command_has_configs_and_every_config_folder_is_a_command():
    assert {command for command, _ in SHIPPED} <= set(COMMANDS)
    assert len(SHIPPED) >= 7


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


@pytest.mark.parametrize("command,name", [("distill-classifier", "digits.yaml"), ("distill-lm", "builtin.yaml"),
                                          ("preference", "builtin.yaml")])
def test_the_spelled_out_defaults_are_the_defaults(command, name):
    """The configs that spell out a command's defaults (what `make demo` runs) do not drift."""
    schema, _ = COMMANDS[command].load()
    assert load_config(schema, os.path.join(ROOT, command, name)) == load_config(schema, None)
