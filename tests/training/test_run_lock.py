"""Issue 33 item 4: a second run (or a resume) started while another writes the same output_dir
is refused in one line naming the holder; a stale lock (its process ended) is taken over with a
notice; the lock is released when the run ends, also on an error."""

import json
import os
import subprocess
import sys

import pytest

from divreg.training._run_folder import LOCK_NAME, acquire_run_lock, release_run_locks


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _lock_of(pid: int, folder, **extra) -> None:
    from divreg.training._run_folder import _start_ticks

    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "start_ticks": _start_ticks(pid),
                                                "started": "2026-12-07T10:00:00", "command": "divreg rl", **extra}))


def test_a_live_holder_is_refused_a_dead_one_taken_over(tmp_path):
    other = _sleeper()
    try:
        _lock_of(other.pid, tmp_path)
        with pytest.raises(ValueError, match=rf"in use by another divreg run \(pid {other.pid}, since "
                                             r"2026-12-07T10:00:00: divreg rl\); wait for it to end") as error:
            acquire_run_lock(str(tmp_path))
        assert "\n" not in str(error.value)
    finally:
        other.kill()
        other.wait()
    notice = acquire_run_lock(str(tmp_path))  # the holder has ended: stale
    assert f"took over the lock of output_dir {str(tmp_path)!r} from pid {other.pid}" in notice
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    release_run_locks()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path):
    """The lock records the holder's start time: a live process with the same pid but another
    start time is not the run that wrote the lock."""
    _lock_of(os.getppid(), tmp_path, start_ticks="1")  # a live pid, another start time
    assert "took over" in acquire_run_lock(str(tmp_path))
    release_run_locks()


def test_another_hosts_lock_is_refused_with_how_to_clear_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 123, "host": "elsewhere", "started": "x"}))
    with pytest.raises(ValueError, match=rf"on host elsewhere .* or remove {tmp_path / LOCK_NAME} if that run is gone"):
        acquire_run_lock(str(tmp_path))


def test_two_runs_in_one_folder(tmp_path):
    """The reported case: ``distill-classifier overwrite=true`` into the folder of a run that is
    still training exits 2 with one line, and leaves the live run's files alone; after the live
    run ends, the lock is gone and a resume runs."""
    import time

    from ..recipes.test_classifier_distillation import _launch

    arguments = [f"output_dir={tmp_path / 'run'}", "methods=[pskd]", "seeds=[0]", "teacher_epochs=2", "epochs=40",
                 "teacher.widths=[8,8]", "student.widths=[4,4]", "min_steps=0"]
    live = _launch(arguments)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "checkpoints" / "teacher.pt").exists() and time.time() < deadline:
            time.sleep(0.05)  # training, its folder written
        assert (tmp_path / "run" / LOCK_NAME).exists()
        config_before = (tmp_path / "run" / "config.yaml").read_text()
        second = subprocess.run([sys.executable, "-m", "divreg.cli", "distill-classifier", *arguments,
                                 "overwrite=true"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and f"is in use by another divreg run (pid {live.pid}" in lines[0], second.stderr
        assert (tmp_path / "run" / "config.yaml").read_text() == config_before
        assert live.poll() is None  # still training
    finally:
        _, err = live.communicate(timeout=600)
    assert live.returncode == 0, err[-2000:]
    assert not (tmp_path / "run" / LOCK_NAME).exists()
