"""A teacher with another tokenizer (ULD). Same-tokenizer teachers are the targets of
:mod:`divreg.targets` (:class:`~divreg.targets.LiveTeacher`, :class:`~divreg.targets.TeacherCache`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...data import IGNORE_INDEX
from ...losses import ULDLoss
from ...models import CausalLM
from ...reductions import per_sequence_mean, sum_over_items


class CrossTokenizerTeacher:
    """ULD: the teacher reads the same text through its own tokenizer; the loss compares the two
    models' sorted next-token distributions at the aligned answer positions."""

    def __init__(self, teacher: CausalLM, student_tokenizer, teacher_tokenizer, temperature: float,
                 per_sequence: bool = False):
        self.per_sequence = per_sequence  # the official reduction: per-sequence mean, then over sequences
        self.uld = ULDLoss(temperature=temperature, reduction=per_sequence_mean if per_sequence else sum_over_items)
        self.teacher = teacher
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        probe_plain = teacher_tokenizer("a", add_special_tokens=False)["input_ids"]
        probe = teacher_tokenizer("a")["input_ids"]
        bos = teacher_tokenizer.bos_token_id
        # a tokenizer that puts BOS before its text (Llama, Mistral) gets it once, before the prompt
        self.leading = [bos] if bos is not None and probe[:1] == [bos] and probe_plain[:1] != [bos] else []

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (no BOS inside the sequence; the official
        ULD code tokenizes with ``add_special_tokens=False``)."""
        return self.teacher_tokenizer(text, add_special_tokens=False)["input_ids"]

    def _retokenize(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher ``input_ids``, ``attention_mask`` and answer mask (positions predicting an
        answer token, shifted like the student's)."""
        rows = []
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            prompt_length = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            answer = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
            prompt_text = self.student_tokenizer.decode(ids[:prompt_length], skip_special_tokens=True)
            answer_text = self.student_tokenizer.decode(answer, skip_special_tokens=True)
            prompt_ids = self.leading + self._encode(prompt_text)
            answer_ids = self._encode(answer_text)
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

    def loss(self, student_logits: Tensor, batch: dict[str, Tensor], num_items_in_batch=None) -> Tensor:
        """ULD distance over the aligned answer positions of the batch, reduced per sequence
        (or per token) and divided by the global count ``num_items_in_batch``."""
        input_ids, attention, teacher_mask = self._retokenize(batch)
        device = student_logits.device
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids.to(device), attention.to(device))[:, :-1]
        student_mask = batch["labels"][:, 1:] != IGNORE_INDEX
        return self.uld(student_logits, student_mask, teacher_logits, teacher_mask.to(device), num_items_in_batch)
