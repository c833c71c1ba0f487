"""Issue 33 item 3: a checkpoint write that fails (here: a file-size limit, RLIMIT_FSIZE, so the
kernel refuses the write with EFBIG, as a full disk refuses it with ENOSPC) leaves the previous
checkpoint intact, and the run stops with one line that says what failed and how to resume; the
resumed run then ends with the weights of an uninterrupted one, bitwise. Nothing fills the disk."""

import json
import os
import resource
import subprocess
import sys

import pytest
import torch

ARGUMENTS = ["methods=[pskd]", "seeds=[0]", "teacher_epochs=2", "epochs=4", "checkpoint_every=5",
             "teacher.widths=[8,8]", "student.widths=[96,96]", "min_steps=0"]


def _run(arguments, file_limit=None):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "divreg.cli", "distill-classifier", *arguments], capture_output=True,
                          text=True, timeout=600, preexec_fn=limit if file_limit else None)


def _weights(folder):
    return {path.name: torch.load(path, weights_only=False)["model"] for path in sorted(folder.glob("*.pt"))}


def test_a_failed_checkpoint_write_stops_in_one_line_and_resumes_exactly(tmp_path):
    reference = _run([f"output_dir={tmp_path / 'reference'}", *ARGUMENTS])
    assert reference.returncode == 0, reference.stderr[-2000:]
    sizes = {path.name: path.stat().st_size for path in (tmp_path / "reference" / "checkpoints").glob("*.pt")}
    limit = (sizes["teacher.pt"] + sizes["pskd-seed0.pt"]) // 2  # the teacher's fits, the student's does not
    assert sizes["teacher.pt"] < limit < sizes["pskd-seed0.pt"], sizes
    failed = _run([f"output_dir={tmp_path / 'run'}", *ARGUMENTS], file_limit=limit)
    assert failed.returncode == 1, failed.stderr[-2000:]
    lines = [line for line in failed.stderr.strip().splitlines()  # progress bars aside
             if line.strip() and "\x1b" not in line and "%|" not in line]
    assert len(lines) == 1, failed.stderr[-3000:]
    assert "pskd-seed0.pt failed (File too large)" in lines[0] and "resume=true" in lines[0], lines[0]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["teacher.pt", "teacher.pt.prev"]  # no temporary file
    assert torch.equal(torch.load(checkpoints / "teacher.pt", weights_only=False)["model"]["net.0.weight"],
                       _weights(tmp_path / "reference" / "checkpoints")["teacher.pt"]["net.0.weight"])
    resumed = _run([f"output_dir={tmp_path / 'run'}", *ARGUMENTS, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _weights(tmp_path / "reference" / "checkpoints"), _weights(checkpoints)
    for name in expected:
        for key, tensor in expected[name].items():
            assert torch.equal(tensor, got[name][key]), (name, key)
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS"])
def test_a_full_disk_a_quota_or_a_read_only_folder_mid_run_is_one_line(tmp_path, monkeypatch, capsys, code):
    """The writer patched to fail as a full disk, an exceeded quota or a folder turned read-only
    would, at the third checkpoint of a run: exit 1, one line naming the checkpoint and how to
    resume, the checkpoints before it intact."""
    import errno

    import divreg.training._checkpoint as checkpoint_module
    from divreg.cli import main

    real_save, calls = checkpoint_module.torch.save, []

    def failing_save(obj, handle):
        calls.append(1)
        if len(calls) == 3:
            handle.write(b"partial")
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        real_save(obj, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(SystemExit) as stopped:
        main(["distill-classifier", f"output_dir={tmp_path / 'run'}", *ARGUMENTS])
    assert stopped.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(err) == 1 and os.strerror(getattr(errno, code)) in err[0] and "resume=true" in err[0], err
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert not [n for n in names if ".tmp-" in n]
    state = torch.load(tmp_path / "run" / "checkpoints" / "teacher.pt", weights_only=False)  # the last good one
    assert "model" in state
