"""The shared run loop: a run interrupted after a checkpoint and resumed ends bitwise where an
uninterrupted run ends, with the same history, component state and log; a finished run is
skipped; checkpoints are atomic."""

import functools
import json
import os

import pytest
import torch
from accelerate import Accelerator

from divreg.training import RunSpec, RunState, load_if_exists, save_atomic, train_run


class Counter:
    """A component with state (like a replay buffer or a method's memory)."""

    def __init__(self):
        self.seen = []

    def state_dict(self):
        return {"seen": list(self.seen)}

    def load_state_dict(self, state):
        self.seen = list(state["seen"])


class Interrupt(Exception):
    pass


def _run(path, stop_at=None, total=12, log_path=None, stop_when=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    data = torch.randn(total, 3, generator=torch.Generator().manual_seed(1))
    counter, calls = Counter(), []

    def step_fn(model, optimizer, step):
        if step == stop_at:
            raise Interrupt
        calls.append(step)
        loss = model(data[step:step + 1]).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        counter.seen.append(step)
        return {"loss": float(loss.detach()), "source": f"s{step % 2}"}

    spec = RunSpec("toy", total, str(path), evaluate_every=4, checkpoint_every=3, progress_keys=("loss",),
                   log_every_step=log_path is not None, stop_when=stop_when)
    result = train_run(Accelerator(cpu=True), spec, model, functools.partial(torch.optim.Adam, lr=0.1), step_fn,
                       lambda model, step, means: {"mean_loss": means["loss"], "source": means["source"]},
                       lambda model: {"metrics": {"weight_norm": float(model.weight.detach().norm())}},
                       components={"counter": counter}, log_path=None if log_path is None else str(log_path))
    return result, model, counter, calls


def test_resume_after_an_interruption_is_bitwise_identical(tmp_path):
    reference, reference_model, reference_counter, _ = _run(tmp_path / "reference.pt")
    with pytest.raises(Interrupt):
        _run(tmp_path / "resumed.pt", stop_at=8)  # checkpoints at steps 3, 6 (and the evaluation at 4)
    assert load_if_exists(str(tmp_path / "resumed.pt"))["state"]["step"] == 6
    resumed, resumed_model, counter, calls = _run(tmp_path / "resumed.pt")
    assert calls == list(range(6, 12))  # continued from the checkpoint, not from the start
    assert all(torch.equal(a, b) for a, b in zip(reference["model"].values(), resumed["model"].values()))
    assert resumed["state"]["history"] == reference["state"]["history"]
    assert [r["step"] for r in reference["state"]["history"]] == [4, 8, 12]
    assert reference["state"]["history"][0]["source"] == "s1"  # the last step's non-numeric metric
    assert counter.seen == reference_counter.seen == list(range(12))
    assert resumed["metrics"] == reference["metrics"] and resumed["state"]["done"]


def test_the_log_of_a_resumed_run_is_the_log_of_an_uninterrupted_one(tmp_path):
    """Per-step and per-evaluation records; the records written after the last checkpoint (steps
    7 and 8, the evaluation at 8, and a line cut short by the kill) are dropped on resume instead
    of repeated, other runs' records in the same log are kept."""
    reference, *_ = _run(tmp_path / "reference.pt", log_path=tmp_path / "reference.jsonl")
    log = tmp_path / "resumed.jsonl"
    log.write_text(json.dumps({"run": "other", "step": 50, "record": "evaluation"}) + "\n")
    with pytest.raises(Interrupt):
        _run(tmp_path / "resumed.pt", stop_at=8, log_path=log)  # checkpoint at 6; steps 7, 8 and evaluation 8 logged
    assert load_if_exists(str(tmp_path / "resumed.pt"))["state"]["step"] == 6
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()][-3:] == [7, 8, 8]
    with open(log, "a") as handle:  # a kill in the middle of a write leaves half a line
        handle.write('{"run": "toy", "step": 9, "rec')
    resumed, *_ = _run(tmp_path / "resumed.pt", log_path=log)
    expected = (tmp_path / "reference.jsonl").read_text().splitlines()
    got = log.read_text().splitlines()
    assert got[0] == json.dumps({"run": "other", "step": 50, "record": "evaluation"}) and got[1:] == expected
    records = [json.loads(line) for line in expected]
    assert [(r["record"], r["step"]) for r in records if r["record"] == "evaluation"] == [
        ("evaluation", 4), ("evaluation", 8), ("evaluation", 12)]
    assert [r["step"] for r in records if r["record"] == "step"] == list(range(1, 13))
    assert resumed["state"]["steps"] == reference["state"]["steps"] == [r for r in records if r["record"] == "step"]
    assert records[4]["mean_loss"] == pytest.approx(sum(r["loss"] for r in records[:4]) / 4, rel=1e-12)


def test_a_run_ends_early_at_an_accepted_evaluation_and_stays_finished(tmp_path):
    result, _, counter, calls = _run(tmp_path / "early.pt", stop_when=lambda record: record["step"] >= 8)
    assert calls == list(range(8)) and result["state"]["done"] and result["state"]["step"] == 8
    assert [r["step"] for r in result["state"]["history"]] == [4, 8]
    again, _, _, calls = _run(tmp_path / "early.pt", stop_when=lambda record: record["step"] >= 8)
    assert calls == [] and again["metrics"] == result["metrics"]  # finished: skipped on the next call


def test_a_finished_run_is_skipped_and_its_weights_loaded(tmp_path):
    first, first_model, _, _ = _run(tmp_path / "run.pt")
    again, model, _, calls = _run(tmp_path / "run.pt")
    assert calls == [] and again["metrics"] == first["metrics"]
    assert torch.equal(model.weight, first_model.weight)


def test_run_state_means_reset_after_each_evaluation():
    state = RunState()
    for value in (1.0, 2.0, 6.0):
        state.add_step({"loss": value, "source": "dataset"})
    assert state.take_means() == {"loss": 3.0, "source": "dataset"}
    assert state.take_means() == {} and state.count == 0


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "state.pt"
    save_atomic({"a": torch.arange(3)}, str(path))
    save_atomic({"a": torch.arange(4)}, str(path))
    assert sorted(os.listdir(tmp_path / "sub")) == ["state.pt", "state.pt.prev"]  # the replaced one kept
    assert torch.equal(load_if_exists(str(path))["a"], torch.arange(4))
    assert load_if_exists(str(tmp_path / "missing.pt")) is None


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_file(tmp_path, monkeypatch):
    """SIGINT in the middle of torch.save: the file is completed and renamed, then the
    KeyboardInterrupt arrives; no temporary file is left."""
    import signal

    import divreg.training._checkpoint as checkpoint_module

    real_save = torch.save

    def interrupted_save(obj, handle):
        os.kill(os.getpid(), signal.SIGINT)  # delivered while the write is under way
        real_save(obj, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted_save)
    # Python's own Ctrl-C handler, whatever launched the tests (a shell's background job ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_atomic({"a": torch.arange(5)}, str(tmp_path / "state.pt"))
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert os.listdir(tmp_path) == ["state.pt"]
    assert torch.equal(load_if_exists(str(tmp_path / "state.pt"))["a"], torch.arange(5))


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import divreg.training._checkpoint as checkpoint_module

    def failing_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"a": 1}, str(tmp_path / "state.pt"))
    assert os.listdir(tmp_path) == []


def test_a_resumable_error_in_a_step_checkpoints_the_steps_done_and_resume_ends_equal(tmp_path):
    """Issue 33 item 5 (the loop's part): a step that raises ResumableError (a server that stopped
    answering after its retries) leaves a checkpoint of the steps before it; resuming from it
    ends with the weights of an uninterrupted run."""
    from divreg.training import ResumableError

    def run(path, fail_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        data = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))

        def step_fn(model, optimizer, step):
            if step == fail_at:
                raise ResumableError("the server at http://127.0.0.1:1 does not answer /v1/completions")
            loss = model(data[step % 12]).pow(2).sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return {"loss": float(loss.detach())}

        spec = RunSpec("r", 10, str(path), evaluate_every=5, checkpoint_every=0)
        return train_run(Accelerator(cpu=True), spec, model, lambda p: torch.optim.SGD(p, lr=0.1), step_fn,
                         lambda model, step, means: {}, lambda model: {})

    reference = run(tmp_path / "reference.pt")
    with pytest.raises(ResumableError):
        run(tmp_path / "failed.pt", fail_at=7)
    assert load_if_exists(str(tmp_path / "failed.pt"))["state"]["step"] == 7  # no periodic checkpoint was due
    resumed = run(tmp_path / "failed.pt")
    for key, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][key])
