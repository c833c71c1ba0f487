"""Text data for language-model recipes: the built-in corpus (Python's own documentation
topics, shipped in the standard library's ``pydoc_data``), a BPE tokenizer trained on it,
JSONL / ``datasets`` records, and tokenization into prompt-completion examples."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass
class TextExample:
    """One tokenized example: its stable id (the key of a cached teacher signal), its token ids,
    and the labels (the ids, with ``IGNORE_INDEX`` on the prompt positions)."""
    example_id: int  # stable id: the cache key of a teacher's signal
    input_ids: list[int]
    labels: list[int]  # input_ids with IGNORE_INDEX on prompt positions
    prompt_length: int

    @classmethod
    def with_prompt(cls, example_id: int, input_ids: list[int], prompt_length: int) -> "TextExample":
        """The example whose first ``prompt_length`` tokens are the prompt (never in the loss)."""
        return cls(example_id, input_ids, [IGNORE_INDEX] * prompt_length + input_ids[prompt_length:], prompt_length)


def builtin_corpus(held_out_every: int = 10) -> tuple[list[str], list[str]]:
    """(train, held-out) documents: the ``pydoc_data`` topics in name order, every
    ``held_out_every``-th one held out. No download: it ships with Python."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    train = [topics[name] for i, name in enumerate(names) if i % held_out_every]
    held_out = [topics[name] for i, name in enumerate(names) if not i % held_out_every]
    return train, held_out


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic), with ``<pad>`` and
    ``<eos>``, as a ``transformers`` fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def chunk_texts(texts: Sequence[str], tokenizer, seq_len: int, prompt_len: int, first_id: int = 0) -> list[TextExample]:
    """Cut the token stream of ``texts`` (documents separated by EOS) into examples of
    ``seq_len`` tokens; the first ``prompt_len`` of each are the prompt (not in the loss)."""
    if not 0 < prompt_len < seq_len:
        raise ValueError(f"need 0 < prompt_len < seq_len, got prompt_len={prompt_len}, seq_len={seq_len}")
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    examples = []
    for start in range(0, len(stream) - seq_len + 1, seq_len):
        ids = stream[start:start + seq_len]
        examples.append(TextExample.with_prompt(first_id + len(examples), ids, prompt_len))
    return examples


class Record(dict):
    """A data record (a plain ``dict`` of its fields) that knows where it came from: ``where`` is
    ``"FILE, line N"`` (1-based) for a JSONL line, ``"FOLDER, row N"`` (the ``datasets`` index)
    for a row of a ``datasets`` folder, ``"record N"`` (0-based) for an item of an in-memory
    sequence. Every data error names it."""

    where: str = "a record"

    @classmethod
    def at(cls, fields: dict, where: str) -> "Record":
        record = cls(fields)
        record.where = where
        return record


def _record_errors() -> tuple[type, ...]:
    """What rendering or tokenizing a bad record raises (a chat template's own checks included)."""
    try:
        from jinja2 import TemplateError
    except ImportError:  # no chat templates without jinja2
        return ValueError, TypeError, KeyError, AttributeError
    return ValueError, TypeError, KeyError, AttributeError, TemplateError


def where(record: dict, index: int) -> str:
    """Where ``record`` (the ``index``-th, 0-based) came from, for an error message."""
    return getattr(record, "where", f"record {index}")


def load_text_records(source) -> list[dict]:
    """Records from a ``.jsonl`` file, a ``datasets.save_to_disk`` folder (its ``train`` split if
    it has several), or an in-memory ``datasets.Dataset``. Each record has ``prompt`` and
    ``completion`` (strings), or ``text`` (a string), or chat ``messages`` (a list of
    ``{"role", "content"}`` mappings); anything else is a ``ValueError`` naming the file and line
    (see :class:`Record`)."""
    records = read_records(source)
    for index, record in enumerate(records):
        if not ({"prompt", "completion"} <= set(record) or "text" in record or "messages" in record):
            raise ValueError(f"{where(record, index)}: has keys {sorted(record)}; expected prompt+completion, text or "
                             "messages")
        if "messages" in record:
            _check_messages(record["messages"], where(record, index), "messages")
        else:
            for key in ("text",) if "text" in record else ("prompt", "completion"):
                if not isinstance(record[key], str):
                    raise ValueError(f"{where(record, index)}: {key!r} is {type(record[key]).__name__} "
                                     f"({str(record[key])[:40]}), not a string")
    return records


def _check_messages(messages, place: str, key: str) -> None:
    """``ValueError`` naming ``place`` unless ``messages`` is a list of chat messages."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in messages):
        raise ValueError(f"{place}: {key!r} must be a list of chat messages, each {{'role': str, 'content': str}}, "
                         f"got {str(messages)[:60]}")


def read_records(source) -> list[dict]:
    """The records (objects) of a ``.jsonl`` (or ``.jsonl.gz``) file, a ``datasets.save_to_disk`` folder (its
    ``train`` split if it has several) or an in-memory sequence, keys with None values dropped,
    each a :class:`Record` that names where it came from."""
    if isinstance(source, str) and source.endswith((".jsonl", ".jsonl.gz")):
        if not os.path.isfile(source):
            raise ValueError(f"data file {source!r} does not exist")
        records, places = [], []
        opener = gzip.open if source.endswith(".gz") else open
        try:
            with opener(source, "rb") as handle:
                for number, raw in enumerate(handle, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as error:
                        raise ValueError(f"{source}, line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at "
                                         f"column {error.start + 1}); save the file as UTF-8 JSON lines") from None
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{source}, line {number}: not valid JSON ({error.msg}, column {error.colno}); "
                                         "each line must be one JSON object") from None
                    except RecursionError:
                        raise ValueError(f"{source}, line {number}: JSON nested too deeply to read") from None
                    places.append(f"{source}, line {number}")
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise ValueError(f"{source}: not a complete gzip file ({type(error).__name__}: {str(error)[:80]}); "
                             "give a .jsonl file or a whole .jsonl.gz") from None
        if not records:
            raise ValueError(f"data file {source!r} is empty: it holds no records (one JSON object per line)")
    elif isinstance(source, str):
        if not os.path.isdir(source):
            raise ValueError(f"data must be 'builtin', a .jsonl (or .jsonl.gz) file or a datasets folder; got {source!r}")
        import datasets

        loaded = datasets.load_from_disk(source)
        records = list(loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded)
        places = [f"{source}, row {row}" for row in range(len(records))]
    else:
        records = list(source)
        places = [getattr(record, "where", f"record {index}") for index, record in enumerate(records)]
    for record, place in zip(records, places):
        if not isinstance(record, dict):
            raise ValueError(f"{place}: is {type(record).__name__}, not an object (a JSON object per line)")
    # a datasets table gives every row every column: drop the empty ones
    return [Record.at({key: value for key, value in record.items() if value is not None}, place)
            for record, place in zip(records, places)]


def _chat_ids(tokenizer, messages: list, add_generation_prompt: bool = False) -> list[int]:
    """The token ids of ``messages`` under the tokenizer's chat template (transformers 5 returns
    a ``BatchEncoding`` where 4.x returned the list)."""
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return list(rendered)


def _prompt_and_completion(record: dict, tokenizer) -> tuple[list[int], list[int]]:
    if "messages" in record:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat 'messages' need a tokenizer with a chat template")
        messages = record["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the last chat message must be the assistant's (the completion)")
        prompt = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        full = _chat_ids(tokenizer, messages)
        if full[:len(prompt)] != prompt:
            raise ValueError("the chat template renders the conversation without its prompt as a prefix; the "
                             "completion cannot be separated from the prompt")
        return prompt, full[len(prompt):]
    if "text" in record:
        return [], tokenizer(record["text"])["input_ids"]
    # the completion continues the prompt: no special tokens (a BOS here would sit mid-sequence)
    return prompt_token_ids(record["prompt"], tokenizer), tokenizer(record["completion"],
                                                                  add_special_tokens=False)["input_ids"]


def prompt_token_ids(prompt, tokenizer) -> list[int]:
    """The token ids a model continues for ``prompt``: a list of chat messages under the
    tokenizer's chat template (with the generation prompt; a tokenizer without a template is a
    ``ValueError``); a string as one user message under the template when the tokenizer has one,
    else as plain text (with the tokenizer's special tokens, e.g. a BOS)."""
    if not isinstance(prompt, str):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("a prompt of chat messages needs a tokenizer with a chat template")
        return _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    if getattr(tokenizer, "chat_template", None):
        return _chat_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(tokenizer(prompt)["input_ids"])


def with_eos(completion: list[int], eos_token_id: int) -> list[int]:
    """The completion ending in exactly one EOS (a chat template may already end the turn with it)."""
    return completion if completion and completion[-1] == eos_token_id else completion + [eos_token_id]


def tokenize_records(records: Sequence[dict], tokenizer, max_length: int, prompt_len: int,
                     first_id: int = 0) -> list[TextExample]:
    """Prompt-completion examples (completion followed by EOS), truncated to ``max_length``.
    ``text`` records use their first ``prompt_len`` tokens as the prompt."""
    examples = []
    for index, record in enumerate(records):
        try:
            prompt, completion = _prompt_and_completion(record, tokenizer)
        except _record_errors() as error:
            raise ValueError(f"{where(record, index)}: {error}") from None
        if not prompt:
            prompt, completion = completion[:prompt_len], completion[prompt_len:]
        ids = (prompt + with_eos(completion, tokenizer.eos_token_id))[:max_length]
        if len(ids) <= len(prompt):
            continue  # nothing left to learn after truncation
        examples.append(TextExample.with_prompt(first_id + len(examples), ids, len(prompt)))
    if not examples:
        span = f"{where(records[0], 0)} to {where(records[-1], len(records) - 1)}: " if records else ""
        raise ValueError(f"{span}no example has completion tokens within max_length={max_length} (every prompt fills "
                         "it); raise seq_len or shorten the prompts")
    return examples


def collate(examples: Sequence[TextExample], pad_token_id: int, length: Optional[int] = None) -> dict[str, Tensor]:
    """Right-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (B, L) and
    ``example_ids`` (B,)."""
    length = length or max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "example_ids": torch.tensor([e.example_id for e in examples])}


def load_text_examples(data: str, held_out: Optional[str], tokenizer, seq_len: int,
                       prompt_len: int) -> tuple[list[TextExample], list[TextExample]]:
    """(train, held-out) examples with stable example ids (the keys of a teacher cache).

    ``data="builtin"``: the built-in corpus cut into ``seq_len``-token examples (its own held-out
    documents). Otherwise records (see :func:`load_text_records`) truncated to ``seq_len``; the
    held-out examples come from ``held_out`` or, when None, are the first tenth of ``data``.
    """
    if data == "builtin":
        train_texts, held_out_texts = builtin_corpus()
        train = chunk_texts(train_texts, tokenizer, seq_len, prompt_len)
        return train, chunk_texts(held_out_texts, tokenizer, seq_len, prompt_len, first_id=len(train))
    train = tokenize_records(load_text_records(data), tokenizer, seq_len, prompt_len)
    if held_out is None:
        cut = max(1, len(train) // 10)
        return train[cut:], train[:cut]
    return train, tokenize_records(load_text_records(held_out), tokenizer, seq_len, prompt_len, first_id=len(train))


def examples_fingerprint(examples: Sequence[TextExample]) -> str:
    """sha256 of the examples' ids, tokens and labels: equal iff a run would train on the same
    examples (whatever path, file name or split option produced them)."""
    import hashlib

    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.example_id, example.input_ids, example.labels]).encode())
    return digest.hexdigest()
