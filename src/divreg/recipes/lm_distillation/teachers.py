"""A teacher with another tokenizer (ULD). Same-tokenizer teachers are the targets of
:mod:`divreg.targets` (:class:`~divreg.targets.LiveTeacher`, :class:`~divreg.targets.TeacherCache`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...data import IGNORE_INDEX
from ...losses import ULDLoss
from ...models import CausalLM


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
