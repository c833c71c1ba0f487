"""One training run of the classifier recipe (the teacher, or one student for one method and
seed): Accelerate for devices and processes, deterministic batches, atomic checkpoints and
exact resume.

All randomness is a function of (seed, epoch, step, process): the epoch's data order and each
step's augmentation noise come from generators seeded that way, so a run resumed from a
checkpoint (model, optimizer, method state, position) replays exactly what it would have done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import ClassificationData
from ..metrics import classification_metrics
from ._checkpoint import load_if_exists, save_atomic
from ._classifier_methods import Batch, Method
from ._runs import append_record, epoch_batches


@dataclass
class RunSpec:
    name: str  # e.g. "teacher" or "kd_forward_kl-seed1"
    method_name: str
    seed: int
    epochs: int
    checkpoint_path: str


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (((seed * 1_000_003 + epoch) * 1_000_003 + step) * 257 + rank) % (2**63 - 1)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """(N, C) class probabilities in fp32, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = torch.cat([torch.softmax(model(x[i:i + batch_size].to(device)).float(), -1).cpu()
                       for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return probs


class Trainer:
    """Trains runs one after another with a shared accelerator, data and teacher."""

    def __init__(self, accelerator: Accelerator, data: ClassificationData, batch_size: int, lr: float,
                 weight_decay: float, checkpoint_every: int, ece_bins: int, log_path: str):
        if batch_size % accelerator.num_processes:
            raise ValueError(f"batch_size={batch_size} must be divisible by the {accelerator.num_processes} processes")
        if batch_size > len(data.y_train):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(data.y_train)} training examples")
        self.accelerator, self.data = accelerator, data
        self.batch_size, self.lr, self.weight_decay = batch_size, lr, weight_decay
        self.checkpoint_every, self.ece_bins, self.log_path = checkpoint_every, ece_bins, log_path

    def _save(self, state: dict, path: str) -> None:
        if self.accelerator.is_main_process:
            save_atomic(state, path)
        self.accelerator.wait_for_everyone()

    def run(self, spec: RunSpec, model: nn.Module, method: Method, teacher: Optional[nn.Module]) -> dict:
        """Train (or resume, or skip if done) one run; return its final checkpoint state."""
        saved = load_if_exists(spec.checkpoint_path)
        if saved is not None and saved["done"]:
            model.load_state_dict(saved["model"])
            return saved
        accelerator = self.accelerator
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        model, optimizer = accelerator.prepare(model, optimizer)
        position = {"epoch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "history": {}}
        if saved is not None:
            accelerator.unwrap_model(model).load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            method.load_state(saved["method"])
            position = saved["position"]
        teacher = None if teacher is None or not method.needs_teacher else teacher.to(accelerator.device).eval()

        def checkpoint(done: bool = False, **extra) -> dict:
            state = {"done": done, "name": spec.name, "model": accelerator.unwrap_model(model).state_dict(),
                     "optimizer": optimizer.state_dict(), "method": method.state(), "position": position, **extra}
            self._save(state, spec.checkpoint_path)
            return state

        x_train, y_train = self.data.x_train, self.data.y_train
        progress = tqdm(range(position["epoch"], spec.epochs), desc=spec.name, leave=False,
                        disable=not accelerator.is_local_main_process)
        for epoch in progress:
            batches = epoch_batches(len(y_train), self.batch_size, spec.seed, epoch)
            model.train()
            for step in range(position["step"], len(batches)):
                global_indices = batches[step]  # (B,)
                local = global_indices.tensor_split(accelerator.num_processes)[accelerator.process_index]
                generator = torch.Generator().manual_seed(_step_seed(spec.seed, epoch, step, accelerator.process_index))
                batch = Batch(x_train[local].to(accelerator.device), y_train[local].to(accelerator.device),
                              local.to(accelerator.device), epoch, generator)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(batch.x)
                loss, logits = method.loss(model, batch, teacher_logits)
                optimizer.zero_grad()
                accelerator.backward(loss)
                optimizer.step()
                method.after_step(accelerator.gather(batch.indices).cpu(), accelerator.gather(logits.detach()).cpu())
                position["loss_sum"] += float(accelerator.reduce(loss.detach(), "mean"))
                position["loss_count"] += 1
                position["step"] = step + 1
                if self.checkpoint_every and position["step"] % self.checkpoint_every == 0 and step + 1 < len(batches):
                    checkpoint()
            record = self._end_epoch(spec, model, epoch, position)
            progress.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['test_accuracy']:.3f}")
            checkpoint()
        probs = predict(accelerator.unwrap_model(model), self.data.x_test)
        metrics = classification_metrics(probs, self.data.y_test, self.ece_bins)
        return checkpoint(done=True, metrics=metrics, test_probs=probs)

    def _end_epoch(self, spec: RunSpec, model: nn.Module, epoch: int, position: dict) -> dict:
        """Evaluate, log one JSONL record, and move the position to the next epoch."""
        probs = predict(self.accelerator.unwrap_model(model), self.data.x_test)
        metrics = classification_metrics(probs, self.data.y_test, self.ece_bins)
        record = {"run": spec.name, "method": spec.method_name, "seed": spec.seed, "epoch": epoch + 1,
                  "train_loss": position["loss_sum"] / max(position["loss_count"], 1),
                  **{f"test_{key}": value for key, value in metrics.items()}}
        append_record(self.accelerator, self.log_path, record)
        for key in ("train_loss", "test_accuracy", "test_nll", "test_ece"):
            position["history"].setdefault(key, []).append(record[key])
        position.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_count=0)
        return record
