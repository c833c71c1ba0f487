"""The teacher side of an LM distillation step: a live model (dense logits, or hidden states
for the fused path), a cache (sparse top-k), or a model with another tokenizer (ULD)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..data._text import IGNORE_INDEX
from ..losses import ULDLoss
from ..targets import TeacherCache
from ._lm_models import CausalLM


class TeacherSignal:
    """Turns a batch into the teacher arguments of :class:`divreg.losses.LMDistillLoss`
    (a live teacher's logits or hidden states, or a cache's top-k)."""

    def __init__(self, teacher: Optional[CausalLM], cache: Optional[TeacherCache], fused: bool):
        self.teacher, self.cache, self.fused = teacher, cache, fused

    @torch.no_grad()
    def arguments(self, batch: dict[str, Tensor]) -> dict:
        if self.cache is not None:
            positions = batch["input_ids"].shape[1] - 1
            ids, logprobs, tail = self.cache.lookup(batch["example_ids"].tolist(), positions)
            device = batch["input_ids"].device
            return {"teacher_sparse": (ids.to(device), logprobs.to(device), tail.to(device))}
        if self.fused:
            hidden = self.teacher(batch["input_ids"], batch["attention_mask"], hidden=True)[:, :-1]
            return {"teacher_hidden": hidden, "teacher_weight": self.teacher.output_weight}
        return {"teacher_logits": self.teacher(batch["input_ids"], batch["attention_mask"])[:, :-1]}


def student_arguments(model, batch: dict[str, Tensor], fused: bool) -> dict:
    """The student arguments of :class:`divreg.losses.LMDistillLoss` (``model`` may be DDP-wrapped)."""
    if fused:
        core = model.module if hasattr(model, "module") else model
        return {"student_hidden": model(batch["input_ids"], batch["attention_mask"], hidden=True)[:, :-1],
                "student_weight": core.output_weight}
    return {"student_logits": model(batch["input_ids"], batch["attention_mask"])[:, :-1]}


class CrossTokenizerTeacher:
    """ULD: the teacher reads the same text through its own tokenizer; the loss compares the two
    models' sorted next-token distributions at the aligned answer positions."""

    def __init__(self, teacher: CausalLM, student_tokenizer, teacher_tokenizer, temperature: float):
        self.teacher, self.uld = teacher, ULDLoss(temperature=temperature)
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer

    def _retokenize(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher ``input_ids``, ``attention_mask`` and answer mask (positions predicting an
        answer token, shifted like the student's)."""
        rows = []
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            prompt_length = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            answer = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
            prompt_text = self.student_tokenizer.decode(ids[:prompt_length], skip_special_tokens=True)
            answer_text = self.student_tokenizer.decode(answer, skip_special_tokens=True)
            prompt_ids = self.teacher_tokenizer(prompt_text)["input_ids"]
            answer_ids = self.teacher_tokenizer(answer_text)["input_ids"]
            rows.append((prompt_ids, answer_ids))
        width = max(len(p) + len(a) for p, a in rows)
        pad = self.teacher_tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        answer_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for row, (prompt_ids, answer_ids) in enumerate(rows):
            n = len(prompt_ids) + len(answer_ids)
            input_ids[row, :n] = torch.tensor(prompt_ids + answer_ids)
            attention[row, :n] = 1
            answer_mask[row, max(len(prompt_ids) - 1, 0): n - 1] = True  # position t predicts token t + 1
        return input_ids, attention, answer_mask

    def loss(self, student_logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Mean ULD distance over the aligned answer positions of the batch."""
        input_ids, attention, teacher_mask = self._retokenize(batch)
        device = student_logits.device
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids.to(device), attention.to(device))[:, :-1]
        student_mask = batch["labels"][:, 1:] != IGNORE_INDEX
        return self.uld(student_logits, student_mask, teacher_logits, teacher_mask.to(device))
