"""Issue 33 item 1: kill anywhere. For each training command (distill-classifier, distill-lm, rl,
preference) a run is SIGKILLed at 20 or more points spread over its steps and over the phases of
a step and of a checkpoint write (``divreg.training.fault_point``: before, during and after the
renames), each time resumed with ``resume=true`` and killed again further on, then resumed to the
end; its final weights, ``metrics.json`` and ``metrics.jsonl`` must equal an uninterrupted run's,
bitwise. ``select``: killed 20 times at each phase (features done, selection staged, the old
selection removed), with and without an earlier selection in the folder: the folder holds either
nothing or a complete selection after every kill, no staging folder is left behind, and the run
that completes selects exactly what an uninterrupted one does.

Each test writes its figures to ``outputs/reliability/<command>.json`` (kills, the phases they
hit, resumes, mismatches), the figures of the docs' Reliability page."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
import torch

from divreg.training._checkpoint import CHECKSUM_KEY, contents_sha256

from ..recipes import lm_fixtures as fx

pytestmark = pytest.mark.slow

KILLS = 20
FIGURES = os.path.join(os.path.dirname(__file__), "..", "..", "outputs", "reliability")


def _run(command: str, arguments: list[str], fault_at=None, log=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIVREG_FAULT")}
    if fault_at is not None:
        env["DIVREG_FAULT_AT"] = str(fault_at)
    if log is not None:
        env["DIVREG_FAULT_LOG"] = str(log)
    return subprocess.run([sys.executable, "-m", "divreg.cli", command, *arguments], capture_output=True, text=True,
                          timeout=600, env=env)


def _points(log) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _write_figures(command: str, figures: dict) -> None:
    os.makedirs(FIGURES, exist_ok=True)
    with open(os.path.join(FIGURES, f"{command}.json"), "w") as handle:
        json.dump(figures, handle, indent=1)


def _checkpoint_models(folder) -> dict:
    """Each final checkpoint's model weights (a file without a model, e.g. preference's cached
    reference log-probs: its whole contents)."""
    models = {}
    for path in sorted((folder / "checkpoints").glob("*.pt")):
        saved = torch.load(path, weights_only=False)
        saved.pop(CHECKSUM_KEY, None)
        models[path.name] = saved["model"] if "model" in saved else {"contents": contents_sha256(saved)}
    return models


def _mismatches(reference, lineage) -> list[str]:
    """What differs between two run folders: each final checkpoint's weights (bitwise), the
    summary and the log."""
    found = []
    expected, got = _checkpoint_models(reference), _checkpoint_models(lineage)
    if expected.keys() != got.keys():
        found.append(f"checkpoints {sorted(expected)} vs {sorted(got)}")
    for name in expected.keys() & got.keys():
        found += [f"{name}:{key}" for key, value in expected[name].items()
                  if key not in got[name] or not (torch.equal(value, got[name][key]) if isinstance(value, torch.Tensor)
                                                  else value == got[name][key])]
    for name in ("metrics.json", "metrics.jsonl"):
        if (reference / name).read_text() != (lineage / name).read_text():
            found.append(name)
    return found


def kill_and_resume(command: str, arguments: list[str], tmp_path) -> dict:
    """The reference run (counting its fault points), then one lineage killed ``KILLS`` times at
    points spread over the run, resumed after each kill, and finished; the figures."""
    reference = tmp_path / "reference"
    log = tmp_path / "reference.points"
    done = _run(command, [*arguments, f"output_dir={reference}"], log=log)
    assert done.returncode == 0, done.stderr[-3000:]
    total = len(_points(log))
    # each resumed run gets this far (plus a jitter) past its checkpoint: the kills cover about half the run
    gap = max(10, total // (2 * KILLS))
    assert total >= (KILLS + 3) * gap, f"{total} fault points: too short a run for {KILLS} kills (raise its steps)"
    lineage, phases, resumes = tmp_path / "lineage", collections.Counter(), 0
    for kill in range(KILLS):
        log = tmp_path / f"kill{kill}.points"
        result = _run(command, [*arguments, f"output_dir={lineage}", *(["resume=true"] if kill else [])],
                      fault_at=gap + kill % 7, log=log)
        resumes += bool(kill)
        assert result.returncode == -9, (kill, result.returncode, result.stderr[-3000:])
        phases[_points(log)[-1]] += 1
    final = _run(command, [*arguments, f"output_dir={lineage}", "resume=true"])
    resumes += 1
    assert final.returncode == 0, final.stderr[-3000:]
    mismatches = _mismatches(reference, lineage)
    figures = {"command": command, "kills": KILLS, "survived": KILLS if not mismatches else 0, "resumes": resumes,
               "fault_points_in_a_run": total, "kills_per_phase": dict(sorted(phases.items())),
               "mismatches": mismatches}
    _write_figures(command, figures)
    assert not mismatches, mismatches
    # spread over the phases of a step and of a checkpoint write
    assert {"step.start", "step.end"} & set(phases) and len({p for p in phases if p.startswith("checkpoint.")}) >= 2, \
        phases
    return figures


CLASSIFIER = ["methods=[pskd]", "seeds=[0]", "teacher_epochs=1", "epochs=2", "checkpoint_every=1",
              "teacher.widths=[8,8]", "student.widths=[4,4]", "min_steps=0"]
RL = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=6", "warmup_batch_size=16", "steps=40",
      "prompts_per_step=4", "group_size=4", "max_new_tokens=3", "eval_every=10", "checkpoint_every=1", "seeds=[0]", "num_iterations=2",
      "policy.config.hidden_size=16", "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=1"]
PREFERENCE = ["digits=1", "train_size=60", "test_size=20", "warmup_steps=6", "warmup_batch_size=16",
              "warmup_target=null", "steps=40", "batch_size=8", "max_new_tokens=3", "eval_every=10", "checkpoint_every=1",
              "seeds=[0]", "kl_prompts=4", "policy.config.hidden_size=16", "policy.config.intermediate_size=32",
              "policy.config.num_hidden_layers=1", "methods=[hypo]"]


def _lm_arguments() -> list[str]:
    overrides = fx.tiny_config_overrides("OUT", steps=24, checkpoint_every=1, eval_every=8, teacher_train_steps=16)
    return [a for a in overrides if not a.startswith("output_dir=")] + [
        "methods=[{name: gkd, divergence: generalized_jsd, lmbda: 0.5}]"]


@pytest.mark.parametrize("command,arguments", [("distill-classifier", CLASSIFIER), ("rl", RL),
                                               ("preference", PREFERENCE), ("distill-lm", None)],
                         ids=["distill-classifier", "rl", "preference", "distill-lm"])
def test_kill_anywhere_then_resume_ends_bitwise_equal(command, arguments, tmp_path):
    figures = kill_and_resume(command, arguments if arguments is not None else _lm_arguments(), tmp_path)
    assert figures["survived"] == KILLS


def test_select_killed_at_every_phase_leaves_nothing_partial_and_selects_the_same(tmp_path):
    from tests.data.test_selection import _write, corpus

    raw, target = corpus(400, 0), corpus(60, 1, topics=(0,))
    _write(tmp_path / "raw.jsonl", raw)
    _write(tmp_path / "target.jsonl", target)
    arguments = [f"raw=[{tmp_path / 'raw.jsonl'}]", f"target=[{tmp_path / 'target.jsonl'}]", "num_to_sample=40",
                 "min_example_length=5", "workers=1", "random_baselines=1"]
    reference = tmp_path / "reference"
    assert _run("select", [*arguments, f"output_dir={reference}"]).returncode == 0
    expected = {name: (reference / name).read_text() for name in os.listdir(reference) if name.startswith("selected")}
    out, phases = tmp_path / "out", collections.Counter()
    for kill in range(KILLS):
        existing = out.exists()
        log = tmp_path / f"kill{kill}.points"
        points = 3 if existing else 2  # featurized, written (and with an earlier selection: the old one removed)
        result = _run("select", [*arguments, f"output_dir={out}", "overwrite=true"], fault_at=1 + kill % points, log=log)
        assert result.returncode == -9, (kill, result.stderr[-2000:])
        phases[_points(log)[-1]] += 1
        if out.exists():  # never partial: a complete selection (the earlier one), or nothing
            assert {n: (out / n).read_text() for n in os.listdir(out) if n.startswith("selected")} == expected
        if kill % 3 == 2 and not out.exists():  # now and then a complete run, so that the next kills find a selection
            assert _run("select", [*arguments, f"output_dir={out}"]).returncode == 0
    final = _run("select", [*arguments, f"output_dir={out}", "overwrite=true"])
    assert final.returncode == 0, final.stderr[-2000:]
    got = {name: (out / name).read_text() for name in os.listdir(out) if name.startswith("selected")}
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".select-")]
    figures = {"command": "select", "kills": KILLS, "survived": KILLS if got == expected and not leftovers else 0,
               "kills_per_phase": dict(sorted(phases.items())), "mismatches": [] if got == expected else ["selection"],
               "staging_folders_left": leftovers}
    _write_figures("select", figures)
    assert got == expected and not leftovers
    assert set(phases) == {"select.featurized", "select.written", "select.replaced"}, phases
