"""The resumable run loop, written once for every recipe: restore if checkpointed, skip if
done, step, evaluate, checkpoint, finish.

A recipe gives a :class:`RunSpec` and three functions: ``step_fn(model, optimizer, step)`` does
one optimizer step and returns its metrics, ``evaluate(model, step, means)`` returns the record
of an evaluation (``means``: the step metrics averaged since the last one), and
``finish(model)`` returns the final results stored in the last checkpoint. Objects with state
(a replay buffer, a stateful schedule, a method's memory) are passed as ``components``: their
``state_dict`` goes into every checkpoint (one per process) and ``load_state_dict`` restores
it. (A stateful schedule's ``observe`` is called by the recipe's ``evaluate``, which knows what
it observes.)

The run's log (``log_path``, JSON lines) gets one record per evaluation (``"record":
"evaluation"``) and, with ``RunSpec.log_every_step``, one per optimizer step (``"record":
"step"``, that step's numeric metrics). A resumed run first drops its own records past the
checkpoint's step (written after the checkpoint, before the interruption), so the log of a
killed-and-resumed run is the log of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ._checkpoint import load_if_exists, save_atomic
from ._faults import fault_point
from ._fsdp import full_state, load_full_state, prepare_sharded
from ._run_folder import append_record, drop_records_after


@dataclass
class RunState:
    """Where a run is; saved in every checkpoint and restored on resume."""

    step: int = 0  # optimizer steps taken
    done: bool = False  # the run finished and its results are in the checkpoint
    history: list[dict] = field(default_factory=list)  # one record per evaluation
    steps: list[dict] = field(default_factory=list)  # one record per step (with RunSpec.log_every_step)
    sums: dict[str, float] = field(default_factory=dict)  # numeric step metrics summed since the last evaluation
    count: int = 0  # steps in those sums
    last: dict[str, Any] = field(default_factory=dict)  # the last step's non-numeric metrics (e.g. a data source)

    def add_step(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
            else:
                self.last[key] = value
        self.count += 1

    def take_means(self) -> dict[str, Any]:
        """The step metrics since the last evaluation (numbers averaged), then reset."""
        means = {**self.last, **{key: value / max(self.count, 1) for key, value in self.sums.items()}}
        self.sums, self.count, self.last = {}, 0, {}
        return means


@dataclass
class RunSpec:
    """What :func:`train_run` runs: the name, the number of optimizer steps, where and how often to
    checkpoint, how often to evaluate, what the progress bar shows, whether every step is logged,
    and an optional early stop after an evaluation."""
    name: str  # the run's name in logs and progress bars, e.g. "teacher" or "kd_forward_kl-seed1"
    total_steps: int  # optimizer steps of the whole run
    checkpoint_path: str
    evaluate_every: int  # evaluate after every this many steps, and after the last
    checkpoint_every: int = 0  # also checkpoint after every this many steps (0: never in between)
    checkpoint_at_evaluation: bool = False  # also checkpoint after each evaluation
    progress_keys: tuple[str, ...] = ()  # record keys shown on the progress bar
    log_every_step: bool = False  # also log (and keep in RunState.steps) every step's numeric metrics
    stop_when: Optional[Callable[[dict], bool]] = None  # end the run early after an evaluation whose record it accepts


def _gathered_states(accelerator: Accelerator, components: Mapping[str, Any]) -> list[dict]:
    local = {name: component.state_dict() for name, component in components.items()}
    return accelerator.gather_for_metrics([local], use_gather_object=True)


def train_run(accelerator: Accelerator, spec: RunSpec, model: nn.Module,
              make_optimizer: Callable[[Any], torch.optim.Optimizer],
              step_fn: Callable[[nn.Module, torch.optim.Optimizer, int], Mapping[str, Any]],
              evaluate: Callable[[nn.Module, int, dict], dict], finish: Callable[[nn.Module], dict], *,
              components: Optional[Mapping[str, Any]] = None, log_path: Optional[str] = None,
              on_start: Optional[Callable[[nn.Module], None]] = None) -> dict:
    """Train (or resume, or skip when done) one run; returns its final checkpoint: ``model``,
    ``optimizer``, ``components``, ``state`` (a :class:`RunState` as a dict) and ``finish``'s
    results. ``model`` is the bare module: the loop prepares it with ``accelerator``."""
    components = dict(components or {})
    saved = load_if_exists(spec.checkpoint_path)
    if saved is not None and saved["state"]["done"]:
        model.load_state_dict(saved["model"])
        return saved
    optimizer = make_optimizer(model.parameters())
    accelerator.free_memory()  # forget earlier runs' models and optimizers (Accelerate's advice between trainings)
    model, optimizer = prepare_sharded(accelerator, model, optimizer)
    state = RunState()
    if saved is not None:
        load_full_state(accelerator, model, optimizer, saved["model"], saved["optimizer"])
        for name, component in components.items():
            component.load_state_dict(saved["components"][accelerator.process_index][name])
        state = RunState(**saved["state"])
    elif on_start is not None:
        on_start(model)
    if log_path is not None:
        drop_records_after(accelerator, log_path, spec.name, state.step)

    def checkpoint(**results) -> dict:
        states = _gathered_states(accelerator, components)
        model_state, optimizer_state = full_state(accelerator, model, optimizer)  # under FSDP: gathered
        checkpoint = {"name": spec.name, "model": model_state, "optimizer": optimizer_state, "components": states,
                      "state": dataclasses.asdict(state), **results}
        failed = None
        if accelerator.is_main_process:
            try:
                save_atomic(checkpoint, spec.checkpoint_path)
            except OSError as error:  # a full disk, a quota, a read-only folder: the previous checkpoint is intact
                failed = (error.errno, error.strerror, error.filename)
        if accelerator.num_processes > 1:  # every process stops, not the main one alone (the others would wait)
            from accelerate.utils import broadcast_object_list

            failed = broadcast_object_list([failed])[0]
        if failed is not None:
            raise OSError(*failed)
        accelerator.wait_for_everyone()
        return checkpoint

    model.train()
    progress = tqdm(range(state.step, spec.total_steps), desc=spec.name, leave=False,
                    disable=not accelerator.is_local_main_process)
    for step in progress:
        fault_point("step.start")
        try:
            metrics = step_fn(model, optimizer, step)
        except ResumableError:  # e.g. a server that stopped answering: nothing of this step is applied yet
            checkpoint()  # the steps done so far, so that resume=true starts at this step
            raise
        state.add_step(metrics)
        state.step = done = step + 1
        fault_point("step.end")
        if spec.log_every_step:
            record = {"run": spec.name, "step": done, "record": "step",
                      **{key: float(value) for key, value in metrics.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)}}
            state.steps.append(record)
            if log_path is not None:
                append_record(accelerator, log_path, record)
        evaluated = done % spec.evaluate_every == 0 or done == spec.total_steps
        if evaluated:
            record = {"run": spec.name, "step": done, "record": "evaluation",
                      **evaluate(model, done, state.take_means())}
            state.history.append(record)
            if log_path is not None:
                append_record(accelerator, log_path, record)
            fault_point("evaluation")
            progress.set_postfix({key: f"{record[key]:.3f}" for key in spec.progress_keys if key in record})
            if spec.stop_when is not None and spec.stop_when(record):
                break  # finished early: the final checkpoint below records where
        periodic = spec.checkpoint_every and done % spec.checkpoint_every == 0
        if done < spec.total_steps and (periodic or (evaluated and spec.checkpoint_at_evaluation)):
            checkpoint()
    state.done = True
    final = checkpoint(**finish(model))
    accelerator.free_memory()
    return final


class ResumableError(RuntimeError):
    """A failure outside the run that a later ``resume=true`` gets past (a server that stopped
    answering after its retries). Raised from a step before it changes the model or the
    optimizer, it makes :func:`train_run` write a checkpoint of the steps done so far before it
    propagates; the command line reports it in one line with how to resume."""


def adamw(lr: float, weight_decay: float = 0.0) -> Callable:
    """``make_optimizer`` for :func:`train_run`: ``torch.optim.AdamW`` at ``lr`` with decoupled
    weight decay (``p <- p - lr * weight_decay * p`` each step) on the matrices (parameters with
    two or more dimensions: attention, MLP, embeddings) and none on vectors (norm gains, biases),
    the usual GPT split (levanter, which "Pre-training under infinite compute" trains with, also
    leaves the embeddings undecayed; here they are decayed). ``weight_decay=0``: one group."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    def make(parameters) -> torch.optim.Optimizer:
        parameters = list(parameters)
        if not weight_decay:
            return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
        groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)

    return make
