"""The vocabulary policy between a student and a teacher: checked, never assumed."""

from __future__ import annotations

import hashlib
import json
from typing import Optional

VOCAB_POLICIES = ("strict", "uld")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the token -> id mapping and the special tokens: equal iff the tokenizers map
    text to the same ids.

    Example:
        >>> from divreg.data import char_tokenizer
        >>> tokenizer_fingerprint(char_tokenizer("ab")) == tokenizer_fingerprint(char_tokenizer("ab"))  # built twice
        True
        >>> tokenizer_fingerprint(char_tokenizer("ab")) == tokenizer_fingerprint(char_tokenizer("ba"))  # ids swapped
        False
    """
    payload = {"vocab": sorted(tokenizer.get_vocab().items()),
               "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _describe(tokenizer) -> str:
    return f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} ({len(tokenizer)} tokens)"


def shared_vocab_size(student_tokenizer, teacher_tokenizer, student_rows: int, teacher_rows: int,
                      policy: str = "strict") -> Optional[int]:
    """How many leading logit columns student and teacher share, or None for a
    cross-tokenizer loss (``policy="uld"``).

    Same tokenizer: its size, which is all the rows when neither model pads its embedding, and
    drops the padded columns otherwise (e.g. 152064 vs 151936 rows: their logits are not
    tokens). Different tokenizers: a ``ValueError`` naming both, unless ``policy="uld"``.

    Example:
        >>> from divreg.data import char_tokenizer
        >>> tokenizer = char_tokenizer("ab")  # 5 tokens: <pad>, <eos>, <unk>, a, b
        >>> shared_vocab_size(tokenizer, char_tokenizer("ab"), student_rows=5, teacher_rows=8)  # a padded teacher
        5
        >>> shared_vocab_size(tokenizer, char_tokenizer("abc"), 5, 6, policy="uld") is None  # cross-tokenizer
        True
    """
    if policy not in VOCAB_POLICIES:
        raise ValueError(f"vocab_policy must be one of {VOCAB_POLICIES}, got {policy!r}")
    same = tokenizer_fingerprint(student_tokenizer) == tokenizer_fingerprint(teacher_tokenizer)
    if not same:
        if policy == "uld":
            return None
        raise ValueError(
            f"the student's tokenizer {_describe(student_tokenizer)} and the teacher's {_describe(teacher_tokenizer)} "
            "differ, so their logits are over different tokens and a token-level divergence would compare unrelated "
            "entries. Use vocab_policy=uld (Universal Logit Distillation, arXiv 2402.12030) for cross-tokenizer "
            "distillation, or give both models the same tokenizer."
        )
    size = len(student_tokenizer)
    if student_rows < size or teacher_rows < size:
        raise ValueError(f"a model has fewer output rows (student {student_rows}, teacher {teacher_rows}) than its "
                         f"tokenizer has tokens ({size})")
    return size  # rows past the tokenizer (a padded embedding, on either side) are not tokens
