"""Preference pairs: a prompt with a chosen and a rejected answer, from JSONL, a ``datasets``
folder or memory, in the formats TRL's ``DPOTrainer`` reads, tokenized into two prompt-completion
examples that share their prompt tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ._text import TextExample, _check_messages, _prompt_and_completion, _record_errors, read_records, where, with_eos


@dataclass
class PreferencePair:
    """One tokenized preference pair: the same prompt with the chosen and with the rejected answer
    (each a :class:`TextExample` whose prompt positions are out of the loss)."""
    pair_id: int
    chosen: TextExample  # prompt + chosen answer + EOS (prompt positions out of the loss)
    rejected: TextExample  # the same prompt + rejected answer + EOS


def load_preference_records(source) -> list[dict]:
    """Pair records from a ``.jsonl`` file, a ``datasets.save_to_disk`` folder or a sequence, each
    in one of three forms:

    - ``{"prompt": str, "chosen": str, "rejected": str}`` (standard);
    - ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` (conversational,
      explicit prompt: the answers are the assistant's messages);
    - ``{"chosen": [messages], "rejected": [messages]}`` (implicit prompt: two conversations that
      differ only in their last, assistant, message).
    """
    records = read_records(source)
    for index, record in enumerate(records):
        if not {"chosen", "rejected"} <= set(record):
            raise ValueError(f"{where(record, index)}: has keys {sorted(record)}; expected prompt, chosen and rejected "
                             "(or chosen and rejected conversations)")
        kinds = {type(record[key]).__name__ for key in ("prompt", "chosen", "rejected") if key in record}
        if kinds not in ({"str"}, {"list"}) or ("prompt" not in record and kinds != {"list"}):
            raise ValueError(f"{where(record, index)}: prompt, chosen and rejected must all be strings, or all lists of "
                             "chat messages (without a prompt: two whole conversations)")
        if kinds == {"list"}:
            for key in ("prompt", "chosen", "rejected"):
                if key in record:
                    _check_messages(record[key], where(record, index), key)
    return records


def _side(record: dict, answer: str) -> dict:
    """The prompt-completion or chat record of one answer of a pair."""
    if isinstance(record[answer], str):
        return {"prompt": record["prompt"], "completion": record[answer]}
    return {"messages": list(record.get("prompt", [])) + list(record[answer])}


def tokenize_pairs(records: Sequence[dict], tokenizer, max_length: int, first_id: int = 0) -> list[PreferencePair]:
    """Each record's two answers as examples (answer followed by EOS) with identical prompt tokens;
    answers longer than ``max_length`` minus the prompt are truncated (and lose their EOS). A
    prompt that leaves no room for an answer, or whose two sides tokenize differently, is an error
    naming the record."""
    pairs = []
    for index, record in enumerate(records):
        sides = []
        for answer in ("chosen", "rejected"):
            try:
                prompt, completion = _prompt_and_completion(_side(record, answer), tokenizer)
            except _record_errors() as error:
                raise ValueError(f"{where(record, index)} ({answer}): {error}") from None
            sides.append((prompt, completion))
        (prompt, chosen), (other_prompt, rejected) = sides
        if prompt != other_prompt:
            raise ValueError(f"{where(record, index)}: the chosen and rejected answers do not share their prompt (the "
                             "conversations differ before the last assistant message)")
        if len(prompt) >= max_length:
            raise ValueError(f"{where(record, index)}: its prompt has {len(prompt)} tokens, leaving no room for an answer "
                             f"within max_length={max_length}; raise max_length or shorten the prompt")
        if not prompt:
            raise ValueError(f"{where(record, index)}: the prompt is empty (no token to condition on)")
        unknown = getattr(tokenizer, "unk_token_id", None)
        if unknown is not None and unknown in prompt + chosen + rejected:
            raise ValueError(f"{where(record, index)}: its text has characters the tokenizer cannot encode (they map to "
                             f"{tokenizer.unk_token!r}); use a tokenizer that covers them")
        examples = [TextExample.with_prompt(first_id + index, (prompt + with_eos(answer, tokenizer.eos_token_id))
                                            [:max_length], len(prompt)) for answer in (chosen, rejected)]
        pairs.append(PreferencePair(first_id + index, *examples))
    if not pairs:
        raise ValueError("no preference pairs: the data holds no records")
    return pairs
