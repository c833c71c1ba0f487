"""Classifier distillation: a teacher, then one student per method and seed, all evaluated for
accuracy and calibration.

``divreg distill-classifier [config.yaml] [key=value ...]``, or ``run(DistillClassifierConfig())``.
Shaped setup -> train -> report. The same command runs in one process or under
``accelerate launch --num_processes N`` (the global batch is split across processes).
Writes to ``output_dir``: ``config.yaml``, ``metrics.json`` (per method, mean and std over
seeds), ``metrics.jsonl`` (per epoch and run), ``reliability.png``, ``metrics.png``,
``curves.png`` and ``checkpoints/`` (atomic; ``resume=true`` continues a killed run exactly).
"""

from __future__ import annotations

import json
import os

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..._table import format_table
from ...data import load_classification_data
from ...metrics import classification_metrics, metric_bars, reliability_diagrams, training_curves
from ...models import build_classifier, predict_probabilities
from ...training import load_model_state, mean_std, prepare_run_folder, run_recipe
from .config import ClassifierMethod, DistillClassifierConfig
from .methods import Method, make_method
from .trainer import ClassifierRun, Trainer, training_schedule

__all__ = ["ClassifierMethod", "DistillClassifierConfig", "DistillClassifierRecipe", "run"]

METRICS = ("accuracy", "nll", "brier", "ece", "aurc", "e_aurc")
CURVES = ("train_loss", "test_accuracy", "test_nll", "test_ece")  # per epoch, in curves.png


def setup(config: DistillClassifierConfig, accelerator):
    """Data, output folders, the trainer, and a fresh start unless resuming."""
    data = load_classification_data(config.data, label_column=config.label_column,
                                    test_fraction=config.test_fraction, seed=config.data_seed)
    # everything the run will build is built once now, so a bad model or method stops it before any training
    shape = build_classifier(config.teacher.kind, config.teacher.widths, data.input_shape, data.num_classes)
    build_classifier(config.student.kind, config.student.widths, data.input_shape, data.num_classes)
    for method in config.methods:  # checked against the teacher's architecture (untrained)
        make_method(method, data, config.epochs, shape, check_only=True)
    checkpoints, log_path = prepare_run_folder(accelerator, config.output_dir, config.resume, config, config.overwrite)
    trainer = Trainer(accelerator, data, config.batch_size, config.lr, config.weight_decay, config.checkpoint_every,
                      config.ece_bins, log_path)
    for key in ("teacher_epochs", "epochs"):
        epochs, every = training_schedule(getattr(config, key), trainer.steps_per_epoch, config.min_steps)
        if epochs > getattr(config, key) and accelerator.is_main_process:
            print(f"notice: {key}={getattr(config, key)} would be {getattr(config, key) * trainer.steps_per_epoch} "
                  f"optimizer steps on {len(data.y_train)} training examples (batch {config.batch_size}); training "
                  f"{epochs} epochs (min_steps={config.min_steps}), evaluated every {every} epochs")
    return data, trainer, checkpoints


def train_teacher(config, data, trainer: Trainer, checkpoints: str) -> tuple[torch.nn.Module, dict]:
    """Train the teacher with cross-entropy, or load its state dict from ``teacher_checkpoint``."""
    set_seed(config.data_seed)
    teacher = build_classifier(config.teacher.kind, config.teacher.widths, data.input_shape, data.num_classes)
    if config.teacher_checkpoint:
        load_model_state(teacher, config.teacher_checkpoint, "teacher_checkpoint", "teacher.kind and teacher.widths")
        probs = predict_probabilities(teacher, data.x_test)
        return teacher, {"metrics": classification_metrics(probs, data.y_test, config.ece_bins), "test_probs": probs,
                         "state": {"history": []}}
    epochs, every = training_schedule(config.teacher_epochs, trainer.steps_per_epoch, config.min_steps)
    run = ClassifierRun("teacher", "ce", config.data_seed, epochs, os.path.join(checkpoints, "teacher.pt"), every)
    state = trainer.run(run, teacher, Method(), None)
    teacher.load_state_dict(state["model"])
    return teacher.eval(), state


def train_students(config, data, trainer: Trainer, teacher, checkpoints: str, seed: int,
                   accelerator) -> dict[str, dict]:
    """One student per method for ``seed``; returns method -> its final state."""
    results: dict[str, dict] = {}
    epochs, every = training_schedule(config.epochs, trainer.steps_per_epoch, config.min_steps)
    for method in tqdm(config.methods, desc="students", disable=not accelerator.is_local_main_process):
        set_seed(seed)
        objective = make_method(method, data, epochs, teacher, seed)
        student = objective.student(build_classifier(config.student.kind, config.student.widths, data.input_shape,
                                                     objective.outputs(data.num_classes)), data.num_classes)
        name = f"{method.name}-seed{seed}"
        run = ClassifierRun(name, method.name, seed, epochs, os.path.join(checkpoints, f"{name}.pt"), every)
        results[method.name] = trainer.run(run, student, objective, teacher)
    return results


def report(config, data, teacher_state: dict, results: dict[str, list[dict]]) -> dict:
    """metrics.json, the printed table and the plots."""
    summary = {"teacher": {m: mean_std([teacher_state["metrics"][m]]) for m in METRICS}}
    for method, states in results.items():
        summary[method] = {m: mean_std([s["metrics"][m] for s in states]) for m in METRICS}
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    rows = [{"method": name, **{m: f"{v[m]['mean']:.4f} ± {v[m]['std']:.4f}" for m in METRICS}}
            for name, v in summary.items()]
    print(format_table(rows, ["method", *METRICS]))
    first = {"teacher": teacher_state, **{method: states[0] for method, states in results.items()}}
    reliability_diagrams({name: (s["test_probs"], data.y_test) for name, s in first.items()},
                         os.path.join(config.output_dir, "reliability.png"), config.ece_bins)
    metric_bars(summary, ["accuracy", "ece", "nll"], os.path.join(config.output_dir, "metrics.png"))
    curves = {name: {key: [record[key] for record in s["state"]["history"]] for key in CURVES}
              for name, s in first.items() if s["state"]["history"]}
    training_curves(curves, os.path.join(config.output_dir, "curves.png"))
    return summary


class DistillClassifierRecipe:
    """``divreg distill-classifier`` (and ``demo``) for :func:`divreg.training.run_recipe`: setup
    (data, the teacher, trained or loaded), per seed one student per method, report."""

    def __init__(self, config: DistillClassifierConfig, accelerator):
        self.config, self.accelerator = config, accelerator

    def setup(self) -> None:
        self.data, self.trainer, self.checkpoints = setup(self.config, self.accelerator)
        self.teacher, self.teacher_state = train_teacher(self.config, self.data, self.trainer, self.checkpoints)

    def run_seed(self, seed: int) -> dict:
        return train_students(self.config, self.data, self.trainer, self.teacher, self.checkpoints, seed,
                              self.accelerator)

    def report(self, results: dict[int, dict]) -> dict:
        by_method = {method.name: [results[seed][method.name] for seed in self.config.seeds]
                     for method in self.config.methods}
        return report(self.config, self.data, self.teacher_state, by_method)

    def describe(self) -> str:
        config, data = self.config, self.data
        return (f"{len(config.methods)} methods x {len(config.seeds)} seeds on {config.data} ({len(data.y_train)} train "
                f"/ {len(data.y_test)} test), {self.accelerator.device}; metrics.json, reliability.png, metrics.png, "
                "curves.png")


def run(config: DistillClassifierConfig) -> dict:
    """Train and evaluate everything; returns the summary written to ``metrics.json``."""
    return run_recipe(DistillClassifierRecipe, config)
