"""The run folder refuses what would silently go wrong: a fresh run over another run's
checkpoints (unless overwrite), a resume with a changed config (naming the keys); a resume
with nothing to resume says so."""

import os

import pytest
from accelerate import Accelerator

from divreg.config import load_config
from divreg.recipes.classifier_distillation import DistillClassifierConfig
from divreg.training import prepare_run_folder, save_atomic


def _config(tmp_path, *overrides):
    return load_config(DistillClassifierConfig, None, [f"output_dir={tmp_path}", *overrides])


def _prepare(config):
    return prepare_run_folder(Accelerator(cpu=True), config.output_dir, config.resume, config, config.overwrite)


def test_a_fresh_run_refuses_a_folder_with_another_run_unless_overwrite(tmp_path):
    checkpoints, _ = _prepare(_config(tmp_path, "methods=[ce]"))
    save_atomic({"x": 1}, os.path.join(checkpoints, "kd_forward_kl-seed0.pt"))
    with pytest.raises(ValueError, match=r"holds a previous run \(config.yaml, checkpoints/kd_forward_kl-seed0.pt\); "
                                         r"pass resume=true to continue it, overwrite=true"):
        _prepare(_config(tmp_path, "methods=[ce]"))
    assert os.path.exists(os.path.join(checkpoints, "kd_forward_kl-seed0.pt"))  # nothing deleted
    _prepare(_config(tmp_path, "methods=[ce]", "overwrite=true"))
    assert os.listdir(checkpoints) == []


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, capsys):
    checkpoints, _ = _prepare(_config(tmp_path, "epochs=2"))
    save_atomic({"x": 1}, os.path.join(checkpoints, "teacher.pt"))
    with pytest.raises(ValueError, match=r"config differs .*epochs: 2 -> 20; lr: 0.003 -> 0.01"):
        _prepare(_config(tmp_path, "epochs=20", "lr=0.01", "resume=true"))
    with pytest.raises(ValueError, match=r"data: 'digits' -> 'other.npz'"):
        _prepare(_config(tmp_path, "epochs=2", "data=other.npz", "resume=true"))
    with pytest.raises(ValueError, match=r"methods: \[.*\] -> \[.*'name': 'x'"):
        _prepare(_config(tmp_path, "epochs=2", "methods=[{name: x, kind: ce}]", "resume=true"))
    _prepare(_config(tmp_path, "epochs=2", "resume=true", "cpu=true"))  # how the run is driven may change
    assert "no checkpoint" not in capsys.readouterr().out


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, capsys):
    _prepare(_config(tmp_path / "new", "resume=true"))
    out = capsys.readouterr().out
    assert "notice: resume=true, but" in out and "has no checkpoint to resume: starting from scratch" in out


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _prepare(_config(tmp_path / "file"))
