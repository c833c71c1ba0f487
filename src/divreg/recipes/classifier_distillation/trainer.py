"""One training run of the classifier recipe (the teacher, or one student for one method and
seed) on the shared run loop of :mod:`divreg.training`: deterministic batches, Accelerate for
devices and processes, atomic checkpoints and exact resume.

All randomness is a function of the seed and where the run is: the epoch's data order comes
from ``derive_seed(seed, epoch)`` and each example's augmentation noise from
``derive_seed(seed, step, example index)``, so a resumed run replays exactly what it would have
done and two processes draw the noise one process would.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
from accelerate import Accelerator
from torch import nn

from ...data import ClassificationData
from ...metrics import classification_metrics
from ...models import predict_probabilities
from ...targets import LiveTeacher
from ...training import RunSpec, check_batch_size, derive_seed, epoch_batches, train_run
from .methods import Batch, Method


@dataclass
class ClassifierRun:
    name: str  # e.g. "teacher" or "kd_forward_kl-seed1"
    method_name: str
    seed: int
    epochs: int  # epochs actually trained (see Trainer.schedule)
    checkpoint_path: str
    evaluate_every_epochs: int = 1  # evaluate (and checkpoint) after every this many epochs


def training_schedule(epochs: int, steps_per_epoch: int, min_steps: int) -> tuple[int, int]:
    """(epochs to train, epochs between evaluations): at least ``epochs``, raised so the run
    takes at least ``min_steps`` optimizer steps (on small data an epoch is one or two steps);
    a raised run is evaluated every k epochs, so that it still has about ``epochs`` evaluations."""
    trained = max(epochs, math.ceil(min_steps / steps_per_epoch))
    return trained, max(1, trained // epochs)


class Trainer:
    """Trains runs one after another with a shared accelerator, data and teacher."""

    def __init__(self, accelerator: Accelerator, data: ClassificationData, batch_size: int, lr: float,
                 weight_decay: float, checkpoint_every: int, ece_bins: int, log_path: str):
        check_batch_size(batch_size, len(data.y_train), accelerator.num_processes)
        self.accelerator, self.data = accelerator, data
        self.batch_size, self.lr, self.weight_decay = batch_size, lr, weight_decay
        self.checkpoint_every, self.ece_bins, self.log_path = checkpoint_every, ece_bins, log_path
        self.steps_per_epoch = len(data.y_train) // batch_size

    def _test_metrics(self, model: nn.Module) -> tuple[torch.Tensor, dict]:
        probs = predict_probabilities(self.accelerator.unwrap_model(model), self.data.x_test)
        return probs, classification_metrics(probs, self.data.y_test, self.ece_bins)

    def run(self, run: ClassifierRun, model: nn.Module, method: Method, teacher: Optional[nn.Module]) -> dict:
        """Train (or resume, or skip if done) one run; return its final checkpoint."""
        accelerator, data, per_epoch = self.accelerator, self.data, self.steps_per_epoch
        teacher = None if teacher is None or not method.needs_teacher else LiveTeacher(
            teacher.to(accelerator.device).eval())
        batches = functools.lru_cache(maxsize=1)(
            lambda epoch: epoch_batches(len(data.y_train), self.batch_size, run.seed, epoch))

        def step_fn(model, optimizer, step: int) -> dict:
            epoch, index = divmod(step, per_epoch)
            global_indices = batches(epoch)[index]  # (B,)
            local = global_indices.tensor_split(accelerator.num_processes)[accelerator.process_index]
            seeds = [derive_seed(run.seed, step, index) for index in local.tolist()]  # per example, not per process
            batch = Batch(data.x_train[local].to(accelerator.device), data.y_train[local].to(accelerator.device),
                          local.to(accelerator.device), epoch, seeds)
            target = None if teacher is None else teacher.signal(batch.x)
            loss, logits = method.loss(model, batch, target)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            method.after_step(accelerator.gather(batch.indices).cpu(), accelerator.gather(logits.detach()).cpu())
            return {"loss": float(accelerator.reduce(loss.detach(), "mean"))}

        def evaluate(model, step: int, means: dict) -> dict:  # after every run.evaluate_every_epochs epochs
            _, metrics = self._test_metrics(model)
            return {"method": run.method_name, "seed": run.seed, "epoch": step // per_epoch,
                    "train_loss": means["loss"], **{f"test_{key}": value for key, value in metrics.items()}}

        def finish(model) -> dict:
            probs, metrics = self._test_metrics(model)
            return {"metrics": metrics, "test_probs": probs}

        spec = RunSpec(run.name, run.epochs * per_epoch, run.checkpoint_path,
                       evaluate_every=per_epoch * run.evaluate_every_epochs,
                       checkpoint_every=self.checkpoint_every, checkpoint_at_evaluation=True,
                       progress_keys=("train_loss", "test_accuracy"))
        optimizer = functools.partial(torch.optim.Adam, lr=self.lr, weight_decay=self.weight_decay)
        return train_run(accelerator, spec, model, optimizer, step_fn, evaluate, finish, components={"method": method},
                         log_path=self.log_path)
