"""Prompt sets for on-policy training (``divreg rl``), in TRL's GRPO dataset format: each record
has a ``prompt`` (a string, or a list of chat messages) and any other columns (``answer``, test
cases, ...), which reach the reward functions by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

from ._tasks import TaskProblem
from ._text import Record, _check_messages, _record_errors, prompt_token_ids, read_records, where


@dataclass
class PromptExample:
    """One prompt of a prompt set: the prompt as given (a string or chat messages, what the reward
    functions receive), its token ids (what the policy continues), the other columns of its
    record (passed to the reward functions by name) and where it came from."""

    prompt: Union[str, list]
    prompt_ids: list[int]
    columns: dict[str, Any] = field(default_factory=dict)
    where: str = "a record"


def load_prompt_records(source) -> list[dict]:
    """Prompt records from a ``.jsonl`` / ``.jsonl.gz`` file, a ``datasets.save_to_disk`` folder or
    a sequence: each must have ``prompt``, a string or a list of ``{"role", "content"}`` messages;
    every other column is kept. A record of another form is a ``ValueError`` naming its file and
    line (or row).

    Example:
        >>> records = load_prompt_records([{"prompt": "2+2=", "answer": "4"}])
        >>> records[0]["answer"], records[0].where
        ('4', 'record 0')
    """
    records = read_records(source)
    for index, record in enumerate(records):
        if "prompt" not in record:
            raise ValueError(f"{where(record, index)}: has keys {sorted(record)}; a prompt set needs a 'prompt' column "
                             "(a string or a list of chat messages); the other columns go to the reward functions")
        if not isinstance(record["prompt"], str):
            _check_messages(record["prompt"], where(record, index), "prompt")
    return records


def tokenize_prompts(records: Sequence[dict], tokenizer, max_prompt_length: int) -> list[PromptExample]:
    """The :class:`PromptExample` of each record: a string prompt under the tokenizer's chat
    template as one user message when it has one, else as plain text (as every divreg command
    reads a string prompt); a list of messages under the chat template, ending with the generation
    prompt. A prompt longer than ``max_prompt_length`` tokens is a ``ValueError`` naming its record
    (never silently cut).

    Example:
        >>> from divreg.data import char_tokenizer
        >>> [example] = tokenize_prompts([{"prompt": "12+3=", "answer": "15"}], char_tokenizer(), 16)
        >>> len(example.prompt_ids) >= 5, example.columns
        (True, {'answer': '15'})
    """
    examples = []
    for index, record in enumerate(records):
        try:
            ids = prompt_token_ids(record["prompt"], tokenizer)
        except _record_errors() as error:
            raise ValueError(f"{where(record, index)}: {error}") from None
        if len(ids) > max_prompt_length:
            raise ValueError(f"{where(record, index)}: the prompt is {len(ids)} tokens, more than max_prompt_length="
                             f"{max_prompt_length}; raise max_prompt_length or shorten the prompt")
        if not ids:
            raise ValueError(f"{where(record, index)}: the prompt is empty once tokenized")
        columns = {key: value for key, value in record.items() if key != "prompt"}
        examples.append(PromptExample(record["prompt"], list(ids), columns, where(record, index)))
    return examples


def task_prompt_records(problems: Sequence[TaskProblem]) -> list[dict]:
    """The built-in task's problems as prompt records (``prompt`` and ``answer``)."""
    return [Record.at({"prompt": p.prompt, "answer": p.answer}, f"built-in problem {i}") for i, p in enumerate(problems)]
