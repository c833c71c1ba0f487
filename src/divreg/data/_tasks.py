"""Generated, verifiable tasks: integer arithmetic with a train/test split by seed, a
character-level tokenizer for it, and its rewards (exact match, format)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

ARITHMETIC_ALPHABET = "0123456789+*="
ARITHMETIC_OPERATIONS = ("+", "*")


@dataclass(frozen=True)
class TaskProblem:
    """One problem: the prompt the model continues and the exact answer it must produce."""

    prompt: str  # e.g. "37+48="
    answer: str  # e.g. "85"


def arithmetic_problems(train_size: int = 2000, test_size: int = 200, *, digits: int = 2,
                        operations: Sequence[str] = ARITHMETIC_OPERATIONS, multiplier_digits: int = 1,
                        seed: int = 0) -> tuple[list[TaskProblem], list[TaskProblem]]:
    """Disjoint train and test sets of integer arithmetic problems, drawn without replacement
    under ``seed`` from every problem of the given difficulty.

    Addition: ``a+b=`` with ``a, b`` of up to ``digits`` digits. Multiplication: ``a*b=`` with
    ``a`` of up to ``digits`` digits and ``b`` of up to ``multiplier_digits`` (small numbers:
    a tiny model can learn it). The answer is the decimal result. No problem is in both sets.

    Example:
        >>> train, test = arithmetic_problems(5, 2, digits=1, seed=0)
        >>> len(train), len(test), bool({p.prompt for p in train} & {p.prompt for p in test})
        (5, 2, False)
        >>> p = train[0]; str(eval(p.prompt[:-1])) == p.answer
        True
    """
    for name, value in (("train_size", train_size), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    for name, value in (("digits", digits), ("multiplier_digits", multiplier_digits)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 6:
            raise ValueError(f"{name} must be an integer in [1, 6], got {value!r}")
    unknown = [op for op in operations if op not in ARITHMETIC_OPERATIONS]
    if not operations or unknown:
        raise ValueError(f"operations must be a non-empty subset of {list(ARITHMETIC_OPERATIONS)}, got {list(operations)}")
    sizes = {"+": (10 ** digits) ** 2, "*": 10 ** digits * 10 ** multiplier_digits}
    total = sum(sizes[op] for op in dict.fromkeys(operations))
    if train_size + test_size > total:
        raise ValueError(f"train_size + test_size = {train_size + test_size} exceeds the {total} distinct problems of "
                         f"digits={digits}, operations={list(operations)}; lower them or raise digits")
    rng = random.Random(seed)
    chosen = rng.sample(range(total), train_size + test_size)  # indices into the enumeration of all problems
    problems = [_problem(index, list(dict.fromkeys(operations)), sizes, digits) for index in chosen]
    return problems[test_size:], problems[:test_size]


def _problem(index: int, operations: list[str], sizes: dict, digits: int) -> TaskProblem:
    for op in operations:
        if index < sizes[op]:
            a, b = divmod(index, sizes[op] // 10 ** digits) if op == "*" else divmod(index, 10 ** digits)
            result = a + b if op == "+" else a * b
            return TaskProblem(f"{a}{op}{b}=", str(result))
        index -= sizes[op]
    raise AssertionError("index out of range")


def char_tokenizer(alphabet: str = ARITHMETIC_ALPHABET):
    """A ``transformers`` fast tokenizer with one token per character of ``alphabet`` plus
    ``<pad>`` and ``<eos>``; decoding concatenates (no spaces). Text with a character outside
    the alphabet is a ``ValueError`` at encoding time (the unknown token is ``<unk>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet) or not alphabet:
        raise ValueError(f"alphabet must be non-empty characters without repeats, got {alphabet!r}")
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def task_records(problems: Sequence[TaskProblem]) -> list[dict]:
    """``{"prompt", "completion"}`` records (the format of :func:`tokenize_records`): supervised
    warm-up and distillation data."""
    return [{"prompt": p.prompt, "completion": p.answer} for p in problems]


_INTEGER = re.compile(r"-?\d+")


def exact_match_reward(completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """1.0 where the completion, stripped of surrounding whitespace, is exactly the answer."""
    if len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions for {len(answers)} answers")
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answers)]


def format_reward(completions: Sequence[str], answers: Optional[Sequence[str]] = None) -> list[float]:
    """1.0 where the completion is one integer and nothing else (the answer's format), else 0."""
    return [1.0 if _INTEGER.fullmatch(c.strip()) else 0.0 for c in completions]
