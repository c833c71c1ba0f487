"""The constraint adapters accept and refuse the right prefixes: the regex adapter against the
`regex` package's partial matching (an independent engine) on every token sequence up to length 3
over multi-character tokens; the JSON-schema adapter against `jsonschema` on complete documents;
the predicate adapter on ids and on text; one-line errors."""

import functools
import itertools
import json
import random

import jsonschema
import pytest
import regex

from divreg.generation import JSONSchema, Predicate, Regex, json_schema_regex, token_texts

VOCAB = ["a", "b", "ab", "c", "ca", "x", "yz", "1", "12", "-", "<eos>"]
EOS = len(VOCAB) - 1


@pytest.mark.parametrize("pattern", [r"(ab|c)+x", r"a*b?c{1,2}(yz|x)", r"-?(0|[1-9][0-9]*)", r"(a|b)c(a|b)"])
def test_regex_prefixes_and_completes_match_partial_matching(pattern):
    constraint = Regex(pattern, VOCAB, eos_token_id=EOS)
    compiled = regex.compile(pattern)
    for length in range(4):
        for ids in itertools.product(range(EOS), repeat=length):
            text = "".join(VOCAB[i] for i in ids)
            viable = compiled.fullmatch(text, partial=True) is not None
            if length:
                assert constraint(ids[:-1], ids[-1]) == viable, (pattern, text)
                assert constraint.prefix(ids) == viable
            assert constraint(ids, EOS) == (compiled.fullmatch(text) is not None), (pattern, text)


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"]}
JSON_VOCAB = list('{}":, ') + ["name", "age", "ab", "x", "1", "12", "-", "0", '"name"', "<eos>"]
JSON_EOS = len(JSON_VOCAB) - 1


def _ids(*pieces):
    return tuple(JSON_VOCAB.index(p) for p in pieces)


def test_json_schema_accepts_documents_of_the_schema_and_refuses_others():
    constraint = JSONSchema(SCHEMA, JSON_VOCAB, eos_token_id=JSON_EOS)
    valid = _ids("{", '"name"', ":", '"', "ab", '"', ",", '"', "age", '"', ":", "12", "}")
    for end in range(1, len(valid) + 1):  # every prefix of a valid document is allowed
        assert constraint(valid[:end - 1], valid[end - 1])
    assert constraint(valid, JSON_EOS) and not constraint(valid[:-1], JSON_EOS)
    document = "".join(JSON_VOCAB[i] for i in valid)
    jsonschema.validate(json.loads(document), SCHEMA)
    refused = {
        "name longer than 3": _ids("{", '"name"', ":", '"', "ab", "ab"),
        "age not an integer": _ids("{", '"name"', ":", '"', "ab", '"', ",", '"', "age", '"', ":", '"'),
        "age required": _ids("{", '"name"', ":", '"', "x", '"', "}"),
        "unknown key": _ids("{", '"', "x"),
        "leading zero": _ids("{", '"name"', ":", '"', "x", '"', ",", '"', "age", '"', ":", "0", "1"),
    }
    for why, ids in refused.items():
        assert not constraint(ids[:-1], ids[-1]), why
        invalid_document = "".join(JSON_VOCAB[i] for i in ids)
        with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
            jsonschema.validate(json.loads(invalid_document), SCHEMA)


def test_json_schema_complete_documents_from_random_walks_are_valid():
    """Random walks over allowed tokens (EOS taken whenever allowed, 300 seeded walks): every
    document completed is valid under jsonschema. outlines-core's expression leaves out
    ``minimum``, so a walk through a negative age reaches a dead end (documented): the only dead
    ends are those."""
    constraint = JSONSchema(SCHEMA, JSON_VOCAB, eos_token_id=JSON_EOS)
    rng = random.Random(0)
    documents, dead_ends = set(), set()
    for _ in range(300):
        ids = ()
        while not constraint(ids, JSON_EOS):
            options = [t for t in range(JSON_EOS) if constraint(ids, t)]
            if not options:
                dead_ends.add("".join(JSON_VOCAB[i] for i in ids))
                break
            ids += (rng.choice(options),)
            assert len(ids) < 200
        else:
            documents.add("".join(JSON_VOCAB[i] for i in ids))
    assert len(documents) >= 50 and dead_ends
    for document in documents:
        jsonschema.validate(json.loads(document), SCHEMA)
    for text in dead_ends:
        assert json.loads(text)["age"] < 0, text


def test_anchors_are_dropped_and_an_escaped_dollar_kept():
    anchored, plain = Regex(r"^(ab|c)+$", VOCAB, eos_token_id=EOS), Regex(r"(ab|c)+", VOCAB, eos_token_id=EOS)
    for ids in itertools.product(range(EOS), repeat=2):
        assert anchored(ids, EOS) == plain(ids, EOS) and anchored.prefix(ids) == plain.prefix(ids)
    dollar = Regex(r"a\$", ["a", "$", "<eos>"], eos_token_id=2)
    assert dollar((0, 1), 2) and not dollar((0,), 2)


def test_predicates_on_ids_and_on_text():
    on_ids = Predicate(lambda ids: all(a <= b for a, b in zip(ids, ids[1:])), lambda ids: len(ids) == 2,
                       eos_token_id=9)
    assert on_ids((1, 2), 2) and not on_ids((1, 2), 1)
    assert on_ids((1, 2), 9) and not on_ids((1,), 9)
    on_text = Predicate(lambda text: "x" not in text, vocabulary=VOCAB, eos_token_id=EOS)
    assert on_text((0,), 1) and not on_text((0,), 5) and on_text((0, 1), EOS)


def test_errors_are_one_actionable_line():
    with pytest.raises(ValueError, match="cannot compile the regular expression.*back-references"):
        Regex(r"(a)\1", VOCAB)
    with pytest.raises(ValueError, match="matches no string"):
        Regex(r"(?=a)b", VOCAB)
    with pytest.raises(ValueError, match="eos_token_id 99 is not a token"):
        Regex("a", VOCAB, eos_token_id=99)
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        json_schema_regex({"type": "no-such-type"})
    with pytest.raises(ValueError, match="not valid JSON"):
        json_schema_regex("{type: object")
    with pytest.raises(TypeError, match="Predicate needs callables"):
        Predicate("not a function")
    log_potential = Predicate(lambda ids: 0.0, eos_token_id=EOS)  # genlm-style 0 / -inf: refused, not misread
    with pytest.raises(TypeError, match="must return True or False, got 0.0"):
        log_potential((), 1)
    with pytest.raises(TypeError, match="pattern must be a str"):
        Regex(5, VOCAB)
    with pytest.raises(TypeError, match=r"one kind for all\), got \['bytes', 'str'\]"):
        Regex("a", [b"a", "b"])
    with pytest.raises(ValueError, match="not valid JSON"):
        JSONSchema("{bad", JSON_VOCAB)


BYTE_TEXTS = ["é", "€", "a", "ab", "1", "é1", "😀"]


def _byte_vocabulary():
    """Byte-level tokens, several of them halves of a character: every UTF-8 byte of the texts
    above, each text whole, and a few byte pairs."""
    pieces = {bytes([b]) for text in BYTE_TEXTS for b in text.encode()} | {t.encode() for t in BYTE_TEXTS}
    pieces |= {"é".encode()[1:] + b"a", "€".encode()[:2]}
    return sorted(pieces) + [b"<eos>"]


@pytest.mark.parametrize("pattern", [r"é+a", r"(€|é)1?", r"[^a]+", r"a.b", r"😀?é"])
def test_regex_on_byte_tokens_matches_partial_matching(pattern):
    """A byte-level vocabulary: viability of every sequence of up to 3 tokens against the `regex`
    package on the decoded text, an unfinished character being viable when one of the characters
    that start with its bytes is (the pattern's own and 20 others)."""
    vocabulary = _byte_vocabulary()
    eos = len(vocabulary) - 1
    constraint = Regex(pattern, vocabulary, eos_token_id=eos)
    compiled = regex.compile(pattern)

    @functools.lru_cache(maxsize=None)
    def completions(pending: bytes):
        """The pattern's own characters that start with ``pending``, and the first 20 others (the
        patterns here have no non-ASCII ranges, so every other character behaves alike)."""
        need = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}[pending[0] >> 4]
        own = [c for c in set(pattern) if c.encode().startswith(pending)]
        others = []
        for tail in itertools.product(range(0x80, 0xC0), repeat=need - len(pending)):
            try:
                others.append((pending + bytes(tail)).decode())
            except UnicodeDecodeError:
                continue
            if len(others) == 20:
                break
        return own + others

    def viable(data: bytes) -> bool:
        try:
            return compiled.fullmatch(data.decode(), partial=True) is not None
        except UnicodeDecodeError:
            pass
        for k in (1, 2, 3):  # the text, then an unfinished character of k bytes
            text, pending = data[:-k], data[-k:]
            try:
                text = text.decode()
            except UnicodeDecodeError:
                continue
            lead = pending[0]
            need = 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF5 else 0
            if k >= need or any(b & 0xC0 != 0x80 for b in pending[1:]):
                return False
            return any(compiled.fullmatch(text + c, partial=True) is not None for c in completions(pending))
        return False

    checked = 0
    for length in range(1, 4):
        for ids in itertools.product(range(eos), repeat=length):
            data = b"".join(vocabulary[i] for i in ids)
            assert constraint.prefix(ids) == viable(data), (pattern, data)
            try:
                complete = compiled.fullmatch(data.decode()) is not None
            except UnicodeDecodeError:
                complete = False
            assert constraint(ids, eos) == complete, (pattern, data)
            checked += 1
    assert checked > 1000


def _trained_tokenizer(corpus, vocab_size, *, byte_level=True):
    """A tokenizer trained here (nothing downloaded): GPT-2-style byte-level BPE, or
    SentencePiece-style BPE (``▁`` for spaces, byte fallback for unseen characters)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if byte_level:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        backend = Tokenizer(models.BPE(byte_fallback=True))
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"] + ([] if byte_level else alphabet),
                                  initial_alphabet=alphabet if byte_level else [])
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def test_token_texts_of_a_byte_level_tokenizer():
    """token_texts gives bytes, the tokens of "é€a" concatenate to its UTF-8, and Regex over them
    accepts exactly the encodings that match."""
    tokenizer = _trained_tokenizer(["é€a ab é1"] * 5, 300)
    texts = token_texts(tokenizer)
    assert all(isinstance(t, bytes) for t in texts) and len(texts) == len(tokenizer)
    ids = tokenizer.encode("é€a")
    assert b"".join(texts[i] for i in ids) == "é€a".encode()
    constraint = Regex(r"é€a|b", texts, eos_token_id=tokenizer.eos_token_id)
    assert all(constraint(ids[:k], ids[k]) for k in range(len(ids))) and constraint(ids, tokenizer.eos_token_id)
    halves = [i for i, t in enumerate(texts) if t == "é".encode()[:1]]
    assert halves and constraint((), halves[0]) and not constraint((), texts.index(b"a"))


def test_token_texts_of_a_sentencepiece_style_tokenizer_with_byte_fallback():
    """``▁`` read as a space, ``<0xNN>`` tokens as their byte: the texts of an encoding that falls
    back to bytes ("€" was never seen) concatenate to the UTF-8 of what decode gives."""
    tokenizer = _trained_tokenizer(["ab ab a b"] * 5, 300, byte_level=False)
    texts = token_texts(tokenizer)
    assert all(isinstance(t, bytes) for t in texts)
    ids = tokenizer.encode("ab €")
    assert any(tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in ids)
    assert b"".join(texts[i] for i in ids) == tokenizer.decode(ids).encode()
    assert Regex(r"ab €", texts, eos_token_id=tokenizer.eos_token_id)(ids, tokenizer.eos_token_id)


def test_token_texts_of_a_word_level_tokenizer_is_decode():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<eos>": 0, "ab": 1, "é": 2}, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = token_texts(PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>"))
    assert texts == ["<eos>", "ab", "é"]


@pytest.mark.slow
def test_byte_regex_with_wide_ranges_and_restricted_second_bytes():
    """Ranges over the surrogate block (interegular lists U+D800-DFFF, which UTF-8 cannot encode),
    and lead bytes whose second byte is restricted (E0, ED, F0, F4): no character starting with
    E0 is in [^\\u0800-\\u0fff]; none of 4 bytes is in a BMP-only class."""
    vocabulary = [b"\xc3", b"\xa9", b"\xe0", b"\xf0", b"\xf4", b"a", b"\xe1"]
    assert Regex("[\x00-\uffff]*", vocabulary).prefix((0,))
    no_e0 = Regex("[^\u0800-\u0fff]*", vocabulary)
    assert not no_e0.prefix((2,)) and no_e0.prefix((6,)) and no_e0.prefix((0, 1))
    bmp = Regex("[^\U00010000-\U0010ffff]*", vocabulary)
    assert not bmp.prefix((3,)) and not bmp.prefix((4,)) and bmp.prefix((2,)) and bmp.prefix((5,))


def test_token_texts_keeps_added_tokens_as_text():
    tokenizer = _trained_tokenizer(["ab é"] * 3, 270)
    tokenizer.add_tokens(["é!"])
    texts = token_texts(tokenizer)
    assert texts[tokenizer.convert_tokens_to_ids("é!")] == "é!".encode() and texts[tokenizer.eos_token_id] == b"<eos>"
