"""Issue 33 item 6: bad input, at scale. Property-based (hypothesis): each command's data readers
and the config loader get generated malformed input (wrong types, missing fields, non-objects,
empty files, binary junk, huge lines, non-UTF-8, truncated gzip); every case either reads or ends
in one ``ValueError`` line that names the file (and the line, for a bad line) or the key. The
command line turns those into exit code 2 with nothing written (a few cases end to end below)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divreg.config import load_config
from divreg.data import load_preference_records, load_prompt_records, load_text_records
from divreg.data.selection import check_has_examples, plan_pieces, read_piece

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                             children, max_size=3),
                           max_leaves=6)
# records with the fields the readers look for, of any type, some missing
records = st.dictionaries(st.sampled_from(["prompt", "completion", "text", "messages", "chosen", "rejected", "answer",
                                           "x"]), json_values, max_size=4)
lines = st.one_of(
    records.map(lambda r: json.dumps(r).encode()),  # an object, maybe of the wrong shape
    json_values.map(lambda v: json.dumps(v).encode()),  # any JSON value, often not an object
    st.binary(max_size=40),  # junk, often not UTF-8
    st.just(b"\xff\xfe not utf-8 \x80"),
    st.just(b'{"text": "' + b"a" * 200_000 + b'"}'),  # a huge line
    st.just(b""), st.just(b"   "), st.just(b"{\"text\": "),  # blank and truncated
)
files = st.lists(lines, max_size=6)


def _one_line(error: Exception, path) -> str:
    message = str(error)
    assert "\n" not in message, message
    assert str(path) in message, message  # names the file
    return message


def _write(tmp_path, name: str, content: list[bytes], gz: bool = False) -> str:
    path = tmp_path / name
    data = b"\n".join(content) + (b"\n" if content else b"")
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("reader", [load_text_records, load_prompt_records, load_preference_records],
                         ids=["distill-lm", "rl", "preference"])
@SETTINGS
@given(content=files, gz=st.booleans())
def test_record_readers_read_or_refuse_in_one_line(tmp_path, reader, content, gz):
    path = _write(tmp_path, "data.jsonl.gz" if gz else "data.jsonl", content, gz)
    try:
        reader(path)
    except ValueError as error:
        message = _one_line(error, path)
        if "line " in message:  # the line it names is in the file and holds something
            written = (b"\n".join(content) + (b"\n" if content else b"")).split(b"\n")
            number = int(message.split(", line ", 1)[1].split(":", 1)[0])
            assert 1 <= number <= len(written) and written[number - 1].strip(), (message, content)


@SETTINGS
@given(content=files)
def test_select_reads_or_refuses_in_one_line(tmp_path, content):
    path = _write(tmp_path, "raw.jsonl", content)
    try:
        check_has_examples([path], "raw")
        for piece in plan_pieces([path], 1 << 16):
            for _ in read_piece(piece, "text"):
                pass
    except ValueError as error:
        _one_line(error, path)


@SETTINGS
@given(junk=st.binary(max_size=200))
def test_a_truncated_or_junk_gzip_is_one_line(tmp_path, junk):
    whole = gzip.compress(b'{"text": "a b c"}\n' * 50)
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2] + junk)
    try:
        load_text_records(str(path))
    except ValueError as error:
        _one_line(error, path)


def _schemas():
    from divreg.cli import COMMANDS

    return sorted(COMMANDS)


yaml_documents = st.one_of(
    st.binary(max_size=80),  # junk, often not UTF-8
    st.dictionaries(st.sampled_from(["lr", "steps", "seeds", "methods", "teacher", "output_dir", "temperature",
                                     "batch_size", "nonsense", "data"]), json_values, max_size=3)
    .map(lambda d: json.dumps(d).encode()),  # a mapping (JSON is YAML) of real and unknown keys, any types
    json_values.map(lambda v: json.dumps(v).encode()),  # a document that is not a mapping
)


@pytest.mark.parametrize("command", _schemas())
@SETTINGS
@given(document=yaml_documents)
def test_the_config_loader_reads_or_refuses_in_one_line(tmp_path, command, document):
    from divreg.cli import COMMANDS

    schema, _ = COMMANDS[command].load()
    path = tmp_path / "config.yaml"
    path.write_bytes(document)
    try:
        load_config(schema, str(path))
    except ValueError as error:
        message = str(error)
        assert "\n" not in message, message
        try:
            keys = list(json.loads(document)) if isinstance(json.loads(document), dict) else []
        except ValueError:
            keys = []
        import dataclasses

        fields = [field.name for field in dataclasses.fields(schema)]
        # names the file, or the key that is wrong (one of the document's or one of the command's)
        assert str(path) in message or any(key and str(key) in message for key in keys + fields), message


@pytest.mark.slow
@pytest.mark.parametrize("command,data_key,content", [
    ("distill-lm", "data", b"\xff\xfe\x00junk\n"),
    ("rl", "data", b'{"prompt": 3}\n'),
    ("preference", "data", b'{"prompt": "a", "chosen": "b"}\n'),
    ("select", "raw", b"[1, 2]\n"),
])
def test_the_command_line_exits_2_in_one_line_and_writes_nothing(tmp_path, command, data_key, content):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    extra = [f"target=[{path}]", "num_to_sample=1"] if command == "select" else []
    if command == "distill-lm":  # a tokenizer of its own (the builtin one is for the builtin text)
        from tests.recipes import lm_fixtures as fx

        fx.tokenizer(300).save_pretrained(tmp_path / "tokenizer")
        extra = [f"tokenizer={tmp_path / 'tokenizer'}"]
    value = f"[{path}]" if command == "select" else str(path)
    result = subprocess.run([sys.executable, "-m", "divreg.cli", command, f"{data_key}={value}", *extra,
                             f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert len(lines) == 1 and str(path) in lines[0] and "line 1" in lines[0], result.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
