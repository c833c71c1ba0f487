"""The recipe driver: every training command of the CLI runs through ``training.run_recipe`` with
a Recipe (setup, run_seed, report, describe); the other commands (analytics, data) build no
Accelerator; the one Accelerator of the package is built in the driver; the driver runs the
seeds in order and reports once."""

import importlib
import inspect
import pathlib
import types

from divreg.cli import COMMANDS
from divreg.training import run_recipe

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "src" / "divreg"
TRAINING = {"demo", "distill-classifier", "distill-lm", "rl", "preference"}


def test_every_training_command_runs_through_the_driver(monkeypatch):
    assert TRAINING <= set(COMMANDS)
    for name, command in COMMANDS.items():
        module = importlib.import_module(command.module)
        if name in TRAINING:
            calls = []
            monkeypatch.setattr(module, "run_recipe", lambda recipe, config: calls.append((recipe, config)) or "done")
            assert getattr(module, command.run)("the config") == "done" and calls[0][1] == "the config", name
            for method in ("setup", "run_seed", "report", "describe"):
                assert callable(getattr(calls[0][0], method)), (name, method)
        else:
            assert "Accelerator(" not in inspect.getsource(module), name  # no training job: no Accelerator


def test_the_one_accelerator_is_built_in_the_driver():
    builders = sorted(str(p.relative_to(SOURCE)) for p in SOURCE.rglob("*.py") if "Accelerator(" in p.read_text())
    assert builders == ["training/_driver.py"]


def test_the_driver_sets_up_runs_each_seed_and_reports_once(capsys):
    events = []

    class Job:
        def __init__(self, config, accelerator):
            events.append(("init", accelerator.num_processes))

        def setup(self):
            events.append("setup")

        def run_seed(self, seed):
            events.append(("seed", seed))
            return {"value": seed * 10}

        def report(self, results):
            events.append(("report", results))
            return {"summary": sum(r["value"] for r in results.values())}

        def describe(self):
            return "a test job"

    config = types.SimpleNamespace(seeds=[3, 1], cpu=True, output_dir="nowhere")
    assert run_recipe(Job, config) == {"summary": 40}
    assert events == [("init", 1), "setup", ("seed", 3), ("seed", 1), ("report", {3: {"value": 30}, 1: {"value": 10}})]
    assert "a test job, 1 process(es), in" in capsys.readouterr().out
