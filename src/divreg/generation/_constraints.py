r"""Constraints on generated token sequences, and adapters for a regular expression, a JSON schema
and a plain Python predicate.

A constraint answers two questions about a sequence of token ids (the prompt excluded):

- ``prefix(ids)``: can ``ids`` still be extended to a complete sequence the constraint accepts?
  (A "dead end" is a prefix for which this is False: every continuation is refused.)
- ``complete(ids)``: is ``ids`` a complete sequence the constraint accepts (may EOS follow it)?

and, built from them, the token-level test the samplers call:
``constraint(prefix_ids, next_id) = complete(prefix_ids)`` if ``next_id`` is the end-of-sequence
token, else ``prefix(prefix_ids + [next_id])``. This is the potential ``c`` of the AWRS paper
(Lipkin et al., 2025, arXiv 2504.05410; genlm-control's ``Potential.prefix`` / ``complete``).

The regular-expression adapter uses ``interegular`` (the regex-to-FSM library genlm-control's
regex potential is built on; pure Python, so a token is checked lazily, one call per token the
sampler asks about, which is what AWRS needs, rather than a whole-vocabulary mask being built per
state as ``outlines-core``'s ``Index`` or ``llguidance`` do). A pattern must match the *whole*
output. The JSON-schema adapter turns the schema into a regular expression with
``outlines-core``'s ``build_regex_from_schema`` (the maintained generator Outlines and vLLM use)
for prefixes, and checks complete documents with ``jsonschema`` as well (the expression leaves out
some keywords, such as ``minimum``). Both work on the text of the tokens (``vocabulary[i]`` is token
i's text): a token whose text is a partial UTF-8 character must be given its own text by the caller.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

Ids = Tuple[int, ...]


class Constraint:
    """Base class: subclasses define ``prefix`` and ``complete`` on tuples of token ids."""

    def __init__(self, eos_token_id: Optional[int]):
        self.eos_token_id = eos_token_id

    def prefix(self, ids: Ids) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def complete(self, ids: Ids) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, prefix_ids: Sequence[int], next_id: int) -> bool:
        ids = tuple(int(i) for i in prefix_ids)
        if self.eos_token_id is not None and int(next_id) == self.eos_token_id:
            return bool(self.complete(ids))
        return bool(self.prefix(ids + (int(next_id),)))


class Predicate(Constraint):
    """A constraint from Python functions ``prefix(x) -> bool`` and ``complete(x) -> bool``.

    ``x`` is the tuple of token ids, or their text when ``vocabulary`` (token id -> text) is given.
    ``complete`` defaults to ``prefix`` (every accepted prefix may end). ``prefix`` must be
    prefix-closed in spirit: if it refuses ``x``, it should refuse every extension of ``x``, or
    the samplers will waste work (they stop extending a refused prefix).
    """

    def __init__(self, prefix: Callable, complete: Optional[Callable] = None, *,
                 eos_token_id: Optional[int] = None, vocabulary: Optional[Sequence[str]] = None):
        super().__init__(eos_token_id)
        if not callable(prefix) or (complete is not None and not callable(complete)):
            raise TypeError("Predicate needs callables: prefix(x) -> bool and optionally complete(x) -> bool")
        self._prefix, self._complete = prefix, complete if complete is not None else prefix
        self.vocabulary = None if vocabulary is None else list(vocabulary)

    def _view(self, ids: Ids):
        return ids if self.vocabulary is None else "".join(self.vocabulary[i] for i in ids)

    def prefix(self, ids: Ids) -> bool:
        return _as_bool(self._prefix(self._view(ids)), "prefix")

    def complete(self, ids: Ids) -> bool:
        return _as_bool(self._complete(self._view(ids)), "complete")


def _as_bool(value, name: str) -> bool:
    """A predicate's answer, refused unless it is a boolean (a log-potential's 0.0 / -inf would be
    read backwards by ``bool``)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"the {name} predicate must return True or False, got {value!r} of type "
                    f"{type(value).__name__} (for a log-potential, return value > -inf)")


class Regex(Constraint):
    """The whole output must match the regular expression ``pattern`` (interegular's syntax:
    Python's ``re`` with look-ahead but without back-references or ``\\b``; a leading ``^`` and a
    trailing ``$`` are dropped, being implied. Unlike ``re`` on ``str``, ``\\d``, ``\\w`` and ``\\s``
    are ASCII-only (``\\d`` refuses "٣") and their negations accept those characters; write the
    characters you mean, e.g. ``[0-9]``).

    ``vocabulary[i]`` is the text of token i (``str``), or its UTF-8 bytes (``bytes``: byte-level
    tokenizers, whose tokens can hold part of a character; see ``token_texts``). The FSM state after
    each prefix is cached, so
    checking one more token costs a walk over that token's characters. ``prefix`` is True when
    the state can still reach an accepting state; ``complete`` when it is accepting.
    """

    def __init__(self, pattern: str, vocabulary: Sequence[str], *, eos_token_id: Optional[int] = None):
        super().__init__(eos_token_id)
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
        kinds = {type(t) for t in vocabulary}
        if not kinds <= {str} and not kinds <= {bytes}:
            raise TypeError(f"vocabulary must hold each token's text as a str, or each token's UTF-8 bytes as "
                            f"bytes (one kind for all), got {sorted(k.__name__ for k in kinds)}")
        self._bytes = kinds == {bytes}
        try:
            import interegular
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("the Regex constraint needs interegular: pip install 'divreg[generation]'") from error
        body = _strip_anchors(pattern)
        try:
            fsm = interegular.parse_pattern(body).to_fsm()
        except Exception as error:
            raise ValueError(f"cannot compile the regular expression {pattern!r}: {error}; interegular supports "
                             "Python's re syntax without back-references, \\b or anchors inside") from error
        if eos_token_id is not None and not 0 <= eos_token_id < len(vocabulary):
            raise ValueError(f"eos_token_id {eos_token_id} is not a token of the {len(vocabulary)}-token vocabulary")
        self.pattern, self.vocabulary = pattern, list(vocabulary)
        self._map, self._alphabet, self._finals = fsm.map, fsm.alphabet, fsm.finals
        self._live = _co_accessible(fsm.map, fsm.finals)
        initial = fsm.initial if fsm.initial in self._live else None
        self._states: Dict[Ids, Optional[int]] = {(): (initial, b"") if self._bytes and initial is not None
                                                  else initial}
        self._starts: Dict[tuple, bool] = {}
        self._by_prefix: Optional[dict] = None
        if initial is None:
            raise ValueError(f"the regular expression {pattern!r} matches no string: every output would be refused")

    def _walk(self, state, token: int):
        if state is None:
            return None
        if self._bytes:
            return self._walk_bytes(state, self.vocabulary[token])
        for char in self.vocabulary[token]:
            state = self._map[state].get(self._alphabet[char])
            if state is None or state not in self._live:
                return None
        return state

    def _state(self, ids: Ids) -> Optional[int]:
        """The FSM state after the text of ``ids`` (None: no accepting state is reachable). The
        states of ``ids[:-1]`` and its prefixes are cached (the last token is the one on trial)."""
        if not ids:
            return self._states[()]
        known = len(ids) - 1
        while ids[:known] not in self._states:
            known -= 1
        state = self._states[ids[:known]]
        for end in range(known + 1, len(ids)):
            state = self._walk(state, ids[end - 1])
            self._states[ids[:end]] = state
        return self._walk(state, ids[-1])

    def _walk_bytes(self, state: tuple, data: bytes):
        """Byte-level tokens: the state is (FSM state, the bytes of an unfinished UTF-8
        character); a character moves the FSM once its bytes are complete, and an unfinished one
        is viable when some character that starts with those bytes leads to a live state."""
        fsm_state, pending = state
        for byte in data:
            pending += bytes((byte,))
            need = _utf8_length(pending[0])
            if need is None or (len(pending) > 1 and not _continues(pending)):
                return None  # not UTF-8
            if len(pending) < need:
                continue
            try:
                char = pending.decode("utf-8")
            except UnicodeDecodeError:  # overlong forms, surrogates
                return None
            fsm_state, pending = self._map[fsm_state].get(self._alphabet[char]), b""
            if fsm_state is None or fsm_state not in self._live:
                return None
        if pending and not self._can_start(fsm_state, pending):
            return None
        return fsm_state, pending

    def _can_start(self, fsm_state: int, pending: bytes) -> bool:
        key = (fsm_state, pending)
        if key not in self._starts:
            from interegular.fsm import anything_else

            if self._by_prefix is None:  # the alphabet's characters by each proper prefix of their UTF-8
                self._by_prefix = {}
                for char, _ in self._alphabet.items():
                    if char is anything_else or 0xD800 <= ord(char) <= 0xDFFF:  # surrogates: not in UTF-8
                        continue
                    encoded = char.encode("utf-8")
                    for cut in range(1, len(encoded)):
                        self._by_prefix.setdefault(encoded[:cut], []).append(char)
            moves = self._map[fsm_state]
            explicit = self._by_prefix.get(pending, [])
            viable = any(moves.get(self._alphabet[c]) in self._live for c in explicit)
            # characters outside the alphabet move by `anything_else`; some start with `pending`
            # unless the alphabet lists every valid completion
            others = moves.get(self._alphabet[anything_else]) in self._live
            self._starts[key] = viable or (others and len(explicit) < _completions(pending))
        return self._starts[key]

    def prefix(self, ids: Ids) -> bool:
        return self._state(ids) is not None

    def complete(self, ids: Ids) -> bool:
        state = self._state(ids)
        if self._bytes:
            return state is not None and state[1] == b"" and state[0] in self._finals
        return state in self._finals


_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _continues(pending: bytes) -> bool:
    """Whether the last byte of ``pending`` can follow the ones before it in UTF-8 (a continuation
    byte; after E0, ED, F0, F4 the second byte's narrower range: no overlong forms or surrogates)."""
    low, high = _SECOND_BYTE.get(pending[0], (0x80, 0xBF)) if len(pending) == 2 else (0x80, 0xBF)
    return low <= pending[-1] <= high


def _completions(pending: bytes) -> int:
    """How many characters' UTF-8 starts with the unfinished ``pending`` (its second byte's narrower
    range after E0, ED, F0, F4 counted)."""
    missing = _utf8_length(pending[0]) - len(pending)
    if len(pending) == 1 and pending[0] in _SECOND_BYTE:
        low, high = _SECOND_BYTE[pending[0]]
        return (high - low + 1) * 64 ** (missing - 1)
    return 64 ** missing


def _utf8_length(lead: int) -> Optional[int]:
    """The byte length of a UTF-8 character from its first byte (None: not a first byte)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return None


def _strip_anchors(pattern: str) -> str:
    """Drop a leading ``^`` and a trailing unescaped ``$``: the whole output must match anyway
    (interegular refuses anchors)."""
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$"):
        backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
        if backslashes % 2 == 0:  # not an escaped dollar sign
            pattern = pattern[:-1]
    return pattern


def _co_accessible(transitions, finals) -> set:
    """The states from which an accepting state can be reached."""
    reverse: Dict[int, set] = {}
    for state, moves in transitions.items():
        for target in moves.values():
            reverse.setdefault(target, set()).add(state)
    live, frontier = set(finals), list(finals)
    while frontier:
        for source in reverse.get(frontier.pop(), ()):
            if source not in live:
                live.add(source)
                frontier.append(source)
    return live


def json_schema_regex(schema: Union[dict, str], whitespace_pattern: Optional[str] = None) -> str:
    """The regular expression outlines-core builds for a JSON schema (a dict or its JSON text).

    Example:
        >>> import re
        >>> pattern = json_schema_regex({"type": "integer"})
        >>> [bool(re.fullmatch(pattern, text)) for text in ("42", "-7", "4.2", "007")]
        [True, True, False, False]
    """
    try:
        from outlines_core.json_schema import build_regex_from_schema
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the JSONSchema constraint needs outlines-core: pip install 'divreg[generation]'") from error
    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the JSON schema is not valid JSON: {error}") from error
    import jsonschema

    try:
        jsonschema.validators.validator_for(parsed).check_schema(parsed)
    except jsonschema.exceptions.SchemaError as error:
        raise ValueError(f"not a valid JSON schema: {error.message}") from error
    try:
        return build_regex_from_schema(text, whitespace_pattern)
    except Exception as error:
        raise ValueError(f"outlines-core cannot turn this JSON schema into a regular expression: {error}") from error


class JSONSchema(Regex):
    """The output must be a JSON document valid under ``schema``, written in outlines-core's
    canonical form: properties in the schema's order, no properties beyond the schema's, at most
    one space between tokens (``whitespace_pattern`` changes that), integers without a fraction or
    exponent, no ``\\u`` escapes. Valid documents in other forms are refused.

    ``prefix``: outlines-core's regular expression for the schema. That expression does not encode every keyword (for
    example an integer's ``minimum``), so ``complete`` also parses the text and validates it with
    ``jsonschema``: no invalid document is ever accepted as complete, but for such keywords a
    prefix can be a dead end (``"age": -`` when ``minimum`` is 0), which SMC's weights account for.
    """

    def __init__(self, schema: Union[dict, str], vocabulary: Sequence[str], *,
                 eos_token_id: Optional[int] = None, whitespace_pattern: Optional[str] = None):
        import jsonschema

        pattern = json_schema_regex(schema, whitespace_pattern)  # a clear error for a bad schema first
        self.schema = json.loads(schema) if isinstance(schema, str) else schema
        super().__init__(pattern, vocabulary, eos_token_id=eos_token_id)
        self._validator = jsonschema.validators.validator_for(self.schema)(self.schema)

    def complete(self, ids: Ids) -> bool:
        if not super().complete(ids):
            return False
        text = b"".join(self.vocabulary[i] for i in ids) if self._bytes else "".join(self.vocabulary[i] for i in ids)
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return bool(self._validator.is_valid(document))


def token_texts(tokenizer) -> list:
    """Each token's text for a Hugging Face tokenizer, as ``Regex`` / ``JSONSchema`` take it.

    - Byte-level BPE (GPT-2, Llama 3, Qwen: a ``ByteLevel`` decoder): each token's bytes, through
      ``transformers``' byte-to-unicode table (a token can be part of a UTF-8 character);
    - SentencePiece-style (``Metaspace`` or ``Replace("▁", " ")`` decoders): the token with ``▁`` as
      a space, and byte-fallback tokens ``<0xNN>`` as their byte (then every text is bytes). The
      leading space of an output's first word stays (``decode`` strips it): a pattern for such
      outputs should allow it, e.g. ``" ?[A-Z].*"``;
    - otherwise ``tokenizer.decode([i])``; this refuses a token that decodes to U+FFFD (part of a
      character), which a text vocabulary cannot represent.

    Special tokens keep their written form (the constraint sees EOS through ``eos_token_id``).

    Example:
        >>> from divreg.data import char_tokenizer
        >>> token_texts(char_tokenizer("ab"))  # neither byte-level nor SentencePiece: decode([i]) per token
        ['<pad>', '<eos>', '<unk>', 'a', 'b']
    """
    import re as _re

    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    kinds = _decoder_kinds(spec.get("decoder"))
    ids = list(range(len(tokenizer)))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if "ByteLevel" in kinds:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        table = {char: byte for byte, char in bytes_to_unicode().items()}
        added = set(getattr(tokenizer, "added_tokens_decoder", {}))  # stored as plain text, not byte-mapped
        return [t.encode("utf-8") if i in added or not all(c in table for c in t) else bytes(table[c] for c in t)
                for i, t in enumerate(tokens)]
    if "Metaspace" in kinds or "Replace" in kinds:
        pieces = []
        for token in tokens:
            match = _re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token) if "ByteFallback" in kinds else None
            pieces.append(bytes([int(match.group(1), 16)]) if match else token.replace("\u2581", " "))
        if any(isinstance(p, bytes) for p in pieces):
            pieces = [p if isinstance(p, bytes) else p.encode("utf-8") for p in pieces]
        return pieces
    texts = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    broken = [i for i, text in enumerate(texts) if "\ufffd" in text]
    if broken:
        raise ValueError(f"{len(broken)} tokens (e.g. id {broken[0]}) decode to U+FFFD (part of a UTF-8 "
                         "character) and this tokenizer's decoder is not one token_texts knows: pass each "
                         "token's bytes yourself")
    return texts


def _decoder_kinds(decoder) -> set:
    """The types of a tokenizer.json decoder and of its parts (a Sequence's)."""
    if not decoder:
        return set()
    found = {decoder.get("type")}
    for part in decoder.get("decoders") or []:
        found |= _decoder_kinds(part)
    return found
