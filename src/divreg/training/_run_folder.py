"""The output folder of a run: checkpoints, the JSONL log of evaluations, the resolved config;
and the checks that keep a run from silently doing the wrong thing with a folder that already
holds one (resume with a changed config, a fresh run over another run's checkpoints)."""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import sys
import tempfile
from typing import Any, Iterable, Optional

import yaml
from accelerate import Accelerator
from omegaconf import OmegaConf

from ..config import to_yaml
from ._checkpoint import remove_run_checkpoints

# Keys that may differ when resuming: they change how a run is driven, not what it computes.
RESUME_FREE_KEYS = ("resume", "overwrite", "cpu")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: value}


def config_differences(saved: dict, current: dict, free_keys: Iterable[str] = RESUME_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (lists compare whole),
    with each side's value, e.g. ``"epochs: 2 -> 20"``; ``free_keys`` (and their sub-keys) are ignored."""
    free = tuple(free_keys)
    before, after = _flatten(saved), _flatten(current)
    differences = []
    for key in sorted(set(before) | set(after)):
        if key.split(".")[0] in free or before.get(key, "<missing>") == after.get(key, "<missing>"):
            continue
        differences.append(f"{key}: {before.get(key, '<missing>')!r} -> {after.get(key, '<missing>')!r}")
    return differences


def _previous_run(output_dir: str) -> list[str]:
    """What a previous run left in ``output_dir``: its config, checkpoints and log."""
    found = [name for name in ("config.yaml", "metrics.jsonl") if os.path.exists(os.path.join(output_dir, name))]
    checkpoints = os.path.join(output_dir, "checkpoints")
    if os.path.isdir(checkpoints):
        found += [f"checkpoints/{name}" for name in sorted(os.listdir(checkpoints)) if name.endswith(".pt")]
    return found


def _check_writable(output_dir: str) -> None:
    """Create ``output_dir`` if needed and write (then remove) a probe file in it, so that a
    read-only or forbidden folder stops the run with one line, on every process, before any work."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".divreg-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"output_dir {output_dir!r} cannot be written ({error.strerror or error}); give a folder "
                         "you can write to") from None


def check_run_folder(output_dir: str, resume: bool, overwrite: bool, config) -> str:
    """Refuse what would silently go wrong, before any work: a fresh run into a folder that
    holds another run (its checkpoints would be deleted, or reused), unless ``overwrite``; a
    resume whose config differs from the saved one (naming the keys). Returns a notice to print
    (empty when none): a resume that finds nothing to resume starts from scratch."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir {output_dir!r} is a file; give a folder")
    _check_writable(output_dir)
    previous = _previous_run(output_dir)
    if not resume:
        if previous and not overwrite:
            shown = ", ".join(previous[:4]) + (f" and {len(previous) - 4} more" if len(previous) > 4 else "")
            raise ValueError(f"output_dir {output_dir!r} holds a previous run ({shown}); pass resume=true to continue "
                             "it, overwrite=true to replace it, or another output_dir")
        return ""
    saved_path = os.path.join(output_dir, "config.yaml")
    if not any(name.startswith("checkpoints/") for name in previous) or not os.path.isfile(saved_path):
        return f"notice: resume=true, but {output_dir!r} has no checkpoint to resume: starting from scratch"
    with open(saved_path) as handle:
        saved = yaml.safe_load(handle) or {}
    differences = config_differences(saved, OmegaConf.to_container(OmegaConf.structured(config)))
    if differences:
        raise ValueError(f"resume=true, but the config differs from the one the checkpoints in {output_dir!r} were "
                         f"written with: {'; '.join(differences)}. Resume with the saved values, or start a new run "
                         "(another output_dir, or overwrite=true)")
    return ""


LOCK_NAME = ".divreg.lock"
_HELD: set[str] = set()  # the lock files this process holds


def _start_ticks(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None:
    with the pid, it names one process (a pid is reused after its process ends)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the process that wrote a lock on this host still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    recorded, now = holder.get("start_ticks"), _start_ticks(pid)
    return recorded is None or now is None or recorded == now


def acquire_run_lock(output_dir: str) -> str:
    """Take ``output_dir/.divreg.lock`` for this process (its pid, host, start time and command),
    so that a second run, or a resume, started in the same folder while this one writes it is
    refused with one line naming the holder. A lock whose process has ended (this host) is stale:
    it is taken over and the returned notice says so. Released by :func:`release_run_locks` (at
    the end of the run, and at exit)."""
    path = os.path.join(output_dir, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
          "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:500]}
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(me, handle)
    notice = ""
    try:
        try:
            os.link(temporary, path)  # atomic, and fails when a lock exists
        except FileExistsError:
            try:
                with open(path) as handle:
                    holder = json.load(handle)
            except (OSError, ValueError):
                holder = {}
            if holder.get("pid") == os.getpid() and holder.get("host") == me["host"]:
                pass  # this process already holds it (a second run of the same process, one after the other)
            elif holder.get("host") not in (None, me["host"]):
                raise ValueError(f"output_dir {output_dir!r} is in use by a divreg run on host {holder['host']} (pid "
                                 f"{holder.get('pid')}, since {holder.get('started')}); wait for it to end, use another "
                                 f"output_dir, or remove {path} if that run is gone")
            elif _alive(holder):
                raise ValueError(f"output_dir {output_dir!r} is in use by another divreg run (pid {holder['pid']}, since "
                                 f"{holder.get('started')}: {holder.get('command', '')[:80]}); wait for it to end or use "
                                 "another output_dir")
            else:
                notice = (f"notice: took over the lock of output_dir {output_dir!r} from pid {holder.get('pid')}, which "
                          "is no longer running")
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    if not _HELD:
        atexit.register(release_run_locks)
    _HELD.add(path)
    return notice


def release_run_locks() -> None:
    """Remove the lock files this process holds (those still naming this process)."""
    for path in list(_HELD):
        _HELD.discard(path)
        try:
            with open(path) as handle:
                if json.load(handle).get("pid") == os.getpid():
                    os.remove(path)
        except (OSError, ValueError):
            pass


def prepare_run_folder(accelerator: Accelerator, output_dir: str, resume: bool, config,
                       overwrite: bool = False) -> tuple[str, str]:
    """Check the folder (:func:`check_run_folder`, on every process), take its lock (the main
    process, :func:`acquire_run_lock`: a run already writing there stops this one, on every
    process), create ``output_dir/checkpoints``, write ``config.yaml``, and on a fresh start
    (``overwrite``) forget the previous run's checkpoints and ``metrics.jsonl``. Returns
    (checkpoint folder, log path)."""
    notice = check_run_folder(output_dir, resume, overwrite, config)
    refused = None
    if accelerator.is_main_process:
        try:
            lock_notice = acquire_run_lock(output_dir)
        except ValueError as error:
            refused = str(error)
        else:
            notice = "\n".join(line for line in (lock_notice, notice) if line)
    if accelerator.num_processes > 1:  # every process stops when the folder is in use, not the main one alone
        from accelerate.utils import broadcast_object_list

        refused = broadcast_object_list([refused])[0]
    if refused:
        raise ValueError(refused)
    accelerator.wait_for_everyone()  # every process has read the folder before the main one changes it
    checkpoints = os.path.join(output_dir, "checkpoints")
    log_path = os.path.join(output_dir, "metrics.jsonl")
    if accelerator.is_main_process:
        if notice:
            print(notice)
        try:
            os.makedirs(checkpoints, exist_ok=True)
            if not resume:
                remove_run_checkpoints(checkpoints)
                if os.path.exists(log_path):
                    os.remove(log_path)
            with open(os.path.join(output_dir, "config.yaml"), "w") as handle:
                handle.write(to_yaml(config))
        except OSError as error:  # read-only, no permission, a file in the way, a full disk
            raise ValueError(f"output_dir {output_dir!r} cannot be written ({error.strerror or error}: "
                             f"{error.filename or output_dir}); give a folder you can write to") from None
    accelerator.wait_for_everyone()
    return checkpoints, log_path


def append_record(accelerator: Accelerator, log_path: str, record: dict) -> None:
    """One JSON line in the run's log, written by the main process."""
    if accelerator.is_main_process:
        with open(log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def drop_records_after(accelerator: Accelerator, log_path: str, run: str, step: int) -> None:
    """Remove from the log the records of ``run`` past ``step`` (the step a resumed run restarts
    from: what was logged after its checkpoint is logged again), atomically, on the main process."""
    if accelerator.is_main_process and os.path.exists(log_path):
        with open(log_path) as handle:
            lines = handle.read().splitlines()
        kept = [line for line in lines if not _after(_parsed(line), run, step)]
        if len(kept) != len(lines):
            temporary = f"{log_path}.tmp"
            with open(temporary, "w") as handle:
                handle.write("".join(line + "\n" for line in kept))
            os.replace(temporary, log_path)
    accelerator.wait_for_everyone()


def _parsed(line: str) -> Optional[dict]:
    """A log line as a record; None for a line cut short (a kill in the middle of a write)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _after(record: Optional[dict], run: str, step: int) -> bool:
    if record is None:
        return True  # a truncated line: dropped

    return record.get("run") == run and isinstance(record.get("step"), int) and record["step"] > step
