"""The command line: subcommands, YAML configs, key=value overrides, clear errors."""

import os
import subprocess
import sys

import pytest

from divreg.cli import main
from divreg.config import load_config, to_yaml
from divreg.recipes.analytics.mode_fitting import ModeFittingConfig


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


@pytest.mark.slow
def test_console_script_is_installed(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "divreg")
    result = subprocess.run([script, "mode-fitting", "steps=2", f"output_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| minimized" in result.stdout


@pytest.mark.slow
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


def _write_bad_inputs(folder):
    """Each bad input of issue 11 item 9 as a file in ``folder``."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)
    np.savez(folder / "no_labels.npz", x_train=x, x_test=x)
    np.savez(folder / "float_labels.npz", x_train=x, y_train=y + 0.5, x_test=x, y_test=y)
    np.savez(folder / "negative_labels.npz", x_train=x, y_train=y - 1, x_test=x, y_test=y)
    np.savez(folder / "features.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    (folder / "text.npz").write_text("not an archive")
    (folder / "text.pt").write_text("not a checkpoint")
    torch.save({"model": {"w": torch.zeros(2)}}, folder / "other_model.pt")
    (folder / "a_file").write_text("x")


def _unwritable_folder(tmp_path):
    """A folder this process cannot write to: a read-only one, or for root (who may write
    anywhere) a path under /sys, where mkdir is refused."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    if not os.access(folder, os.W_OK):
        return str(folder / "out")
    try:  # sysfs refuses new folders even to root
        os.mkdir("/sys/divreg-test-out")
    except OSError:
        return "/sys/divreg-test-out"
    os.rmdir("/sys/divreg-test-out")
    pytest.skip("no folder on this machine refuses writes to this user")


CLASSIFIER_ERRORS = [
    ("data=missing.npz", "data file 'missing.npz' does not exist"),
    ("data=no_labels.npz", "lacks the arrays ['y_train', 'y_test']"),
    ("data=float_labels.npz", "y_train must be a 1-D array of integer class ids, got float64"),
    ("data=negative_labels.npz", "y_train has negative labels (min -1)"),
    ("data=text.npz", "data file 'text.npz' is not a NumPy .npz archive"),
    ("teacher_checkpoint=missing.pt", "teacher_checkpoint 'missing.pt' does not exist"),
    ("teacher_checkpoint=text.pt", "teacher_checkpoint 'text.pt' is not a PyTorch checkpoint"),
    ("teacher_checkpoint=other_model.pt", "holds another architecture than the configured model (missing ["),
    ("output_dir=a_file", "output_dir 'a_file' is a file; give a folder"),
    ("output_dir=UNWRITABLE", "cannot be written"),
    ("student.kind=nope", "model kind must be 'auto', 'mlp', 'cnn' or a dotted import path, got 'nope'"),
    ("student.kind=nomodule.Net", "cannot import model 'nomodule.Net': No module named 'nomodule'"),
    ("data=features.npz student.kind=cnn", "model 'cnn' needs image inputs (C, H, W); these are (4,)"),
]


@pytest.mark.parametrize("arguments,message", CLASSIFIER_ERRORS, ids=[a for a, _ in CLASSIFIER_ERRORS])
def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, arguments, message, capsys):
    """Issue 11 item 9: every user error after the config is parsed is one line (what, where,
    how to fix) and exit code 2, before any training; ``--debug`` raises it with its traceback."""
    _write_bad_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    arguments = arguments.replace("UNWRITABLE", _unwritable_folder(tmp_path) if "UNWRITABLE" in arguments else "")
    base = ["distill-classifier", "output_dir=out", "methods=[ce]", "seeds=[0]", "epochs=1", "teacher_epochs=1",
            "min_steps=0"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *arguments.split()])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("divreg distill-classifier: error: ") and message in err and "--debug" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not list(tmp_path.glob("out/checkpoints/*.pt"))  # stopped before training
    with pytest.raises(ValueError):
        main([*base, *arguments.split(), "--debug"])


def test_text_data_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """The LM commands: an empty JSONL says it is empty, a broken line names the file and line,
    a missing tokenizer folder says so."""
    from .recipes import lm_fixtures as fx

    monkeypatch.chdir(tmp_path)
    fx.tokenizer().save_pretrained(tmp_path / "tok")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    (tmp_path / "number.jsonl").write_text('{"text": "fine"}\n\n{"text": 5}\n')
    cases = [("data=empty.jsonl", "'empty.jsonl' is empty: it holds no records"),
             ("data=broken.jsonl", "broken.jsonl, line 2: not valid JSON"),
             ("data=number.jsonl", "number.jsonl, line 3: 'text' is int (5), not a string"),
             ("tokenizer=no/such/tok", "tokenizer 'no/such/tok': no such folder")]
    for arguments, message in cases:
        for command in ("distill-lm", "cache-teacher"):
            extra = ["tokenizer=tok"] if "tokenizer=" not in arguments else []
            with pytest.raises(SystemExit) as exit_info:
                main([command, "output_dir=out", *extra, arguments])
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, (command, err)


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


@pytest.mark.slow
def test_ctrl_c_says_where_the_checkpoints_are_and_how_to_resume(tmp_path):
    """SIGINT (Ctrl-C) in the middle of training: exit code 130 and one line naming the
    checkpoint folder and resume=true, no traceback."""
    import signal
    import time

    script = os.path.join(os.path.dirname(sys.executable), "divreg")
    process = subprocess.Popen([script, "distill-classifier", "methods=[ce]", "seeds=[0]", "teacher_epochs=200",
                                "checkpoint_every=1", "output_dir=out"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # the default Ctrl-C disposition, whatever launched the tests (a background job of a
                               # shell without job control ignores SIGINT, and a child inherits that)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not (tmp_path / "out/checkpoints/teacher.pt").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"divreg distill-classifier: interrupted; the last checkpoints are in "
                    f"{os.path.join('out', 'checkpoints')}: run the same command with resume=true to continue")
    assert "Traceback" not in err
