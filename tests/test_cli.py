"""The command line: subcommands, YAML configs, key=value overrides, clear errors."""

import os
import subprocess
import sys

import pytest

from divreg.cli import main
from divreg.config import load_config, to_yaml
from divreg.recipes.mode_fitting import ModeFittingConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("steps: 7\nlr: 0.1\nmode_centers: [-1.0, 1.0]\n")
    config = load_config(ModeFittingConfig, str(path), ["lr=0.2"])
    assert (config.steps, config.lr, config.mode_centers, config.bins) == (7, 0.2, [-1.0, 1.0], 100)
    assert load_config(ModeFittingConfig, None, [f"steps={config.steps}"]).steps == 7
    assert "steps: 7" in to_yaml(config)


@pytest.mark.parametrize("overrides,message", [
    (["nope=1"], "invalid config key 'nope'"),
    (["steps=abc"], "invalid config key 'steps'"),
    (["steps"], "not of the form key=value"),
    (["steps=0"], "steps must be >= 1"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(ModeFittingConfig, None, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(ModeFittingConfig, str(tmp_path / "missing.yaml"))


def test_main_runs_and_rejects(tmp_path, capsys):
    assert main(["mode-fitting", "steps=2", f"output_dir={tmp_path}"]) == 0
    assert (tmp_path / "mode_fitting.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["mode-fitting", "steps=-3"])
    assert exit_info.value.code == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "epochs=0"])
    assert "epochs must be > 0" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "divreg")
    result = subprocess.run([script, "mode-fitting", "steps=2", f"output_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| minimized" in result.stdout


def test_a_model_module_in_the_current_folder_is_found(tmp_path):
    """``student.kind=mystudents.Linear`` imports from the folder the command runs in, as
    ``python -m`` would (the console script alone does not put it on sys.path)."""
    (tmp_path / "mystudents.py").write_text(
        "import math\nimport torch\n\n"
        "def Linear(input_shape, num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))\n")
    script = os.path.join(os.path.dirname(sys.executable), "divreg")
    result = subprocess.run([script, "distill-classifier", "student.kind=mystudents.Linear", "methods=[ce]", "seeds=[0]",
                             "teacher_epochs=1", "epochs=1", "min_steps=0", "teacher.widths=[4,4]", "output_dir=out"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert " ce | " in result.stdout and "1 process(es)" in result.stdout


@pytest.mark.parametrize("arguments,message", [
    (["data=missing.npz"], "data file 'missing.npz' does not exist"),
    (["teacher_checkpoint=missing.pt"], "No such file or directory"),
])
def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, arguments, message, capsys):
    base = ["distill-classifier", f"output_dir={tmp_path / 'out'}", "methods=[ce]", "seeds=[0]", "epochs=1",
            "teacher_epochs=1", "min_steps=0"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("divreg distill-classifier: error: ") and message in err and "--debug" in err
    assert "Traceback" not in err and err.count("\n") == 1
    with pytest.raises((ValueError, FileNotFoundError)):
        main([*base, *arguments, "--debug"])


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 3\nlr: [0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["mode-fitting", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "not valid YAML" in err and "line" in err


@pytest.mark.parametrize("command", ["distill-classifier", "distill-lm", "cache-teacher", "mode-fitting"])
def test_help_lists_every_config_key_with_its_default_and_comment(command, capsys):
    import dataclasses

    from divreg.cli import COMMANDS, config_keys

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    schema, _ = COMMANDS[command].load()
    keys = config_keys(schema)
    assert {key.split(".")[0] for key, _, _ in keys} == {field.name for field in dataclasses.fields(schema)}
    for key, default, comment in keys:
        assert f"  {key} = {default}" in out, key
        assert comment and comment in out, f"{key} has no comment"


def test_print_config_resolves_and_does_not_run(tmp_path, capsys):
    assert main(["distill-lm", "--print-config", "steps=7", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "methods:" in out and not any(tmp_path.iterdir())
