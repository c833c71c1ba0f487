"""Text examples: the built-in corpus split, record files, and collation."""

import copy
import json

import pytest
import torch

from divreg.data import IGNORE_INDEX, TextExample, collate, load_text_examples, load_text_records, tokenize_records

from ..recipes import lm_fixtures as fx


def test_builtin_examples_have_stable_distinct_ids_and_prompts_out_of_the_loss():
    train, held_out = load_text_examples("builtin", None, fx.tokenizer(), seq_len=24, prompt_len=6)
    ids = [e.example_id for e in train + held_out]
    assert ids == list(range(len(ids)))  # held-out ids follow the training ids: one id space
    assert all(len(e.input_ids) == 24 and e.labels[:6] == [IGNORE_INDEX] * 6 for e in train[:50])
    again, _ = load_text_examples("builtin", None, fx.tokenizer(), seq_len=24, prompt_len=6)
    assert [e.input_ids for e in again[:20]] == [e.input_ids for e in train[:20]]


def test_records_split_a_tenth_for_held_out_unless_given(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": f" a{i}"}) for i in range(30)))
    train, held_out = load_text_examples(str(path), None, fx.tokenizer(), seq_len=32, prompt_len=2)
    assert (len(train), len(held_out)) == (27, 3)
    other = tmp_path / "held.jsonl"
    other.write_text(json.dumps({"text": "assert statements are debugging aids"}))
    train, held_out = load_text_examples(str(path), str(other), fx.tokenizer(), seq_len=32, prompt_len=2)
    assert len(train) == 30 and [e.example_id for e in held_out] == [30]


def test_collate_pads_right_and_keeps_ids():
    examples = [TextExample.with_prompt(7, [5, 6, 7, 8], 2), TextExample.with_prompt(9, [5, 6, 7], 1)]
    batch = collate(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 7, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 6, 7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert torch.equal(batch["example_ids"], torch.tensor([7, 9]))
    with pytest.raises(ValueError, match="expected prompt\\+completion, text or messages"):
        load_text_records([{"question": "?"}])


def test_bad_record_files_say_what_and_where(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty: it holds no records"):
        load_text_records(str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "oops"\n')
    with pytest.raises(ValueError, match=r"broken.jsonl, line 2: not valid JSON"):
        load_text_records(str(broken))
    listed = tmp_path / "listed.jsonl"
    listed.write_text('["text", "x"]\n')
    with pytest.raises(ValueError, match="listed.jsonl, line 1: is list"):
        load_text_records(str(listed))


@pytest.mark.parametrize("line,message", [
    ('{"text": 5}', r"'text' is int \(5\), not a string"),
    ('{"prompt": "a", "completion": ["b"]}', "'completion' is list"),
    ('{"prompt": null, "completion": "b"}', r"has keys \['completion'\]"),
    ('{"messages": [{"role": "user"}]}', "'messages' must be a list of chat messages"),
    ('{"messages": "hi"}', "'messages' must be a list of chat messages"),
])
def test_a_bad_record_names_its_file_and_one_based_line(tmp_path, line, message):
    """Blank lines count: the error's line is the file's line as an editor shows it."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine"}\n\n' + line + '\n{"text": "also fine"}\n')
    with pytest.raises(ValueError, match=rf"data.jsonl, line 3: {message}"):
        load_text_records(str(data))


def test_a_bad_row_of_a_datasets_folder_is_named_and_tokenizer_errors_keep_the_place(tmp_path):
    import datasets

    folder = tmp_path / "rows"
    datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None},
                                {"prompt": "d", "completion": "e"}]).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"rows, row 1: has keys \['prompt'\]"):
        load_text_records(str(folder))
    data = tmp_path / "chat.jsonl"
    data.write_text('{"text": "fine"}\n{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "yo"}]}\n')
    records = load_text_records(str(data))
    with pytest.raises(ValueError, match="chat.jsonl, line 2: chat 'messages' need a tokenizer with a chat template"):
        plain = copy.deepcopy(fx.tokenizer())  # the shared fixture may carry another test's chat template
        plain.chat_template = None
        tokenize_records(records, plain, 32, 4)


def test_a_chat_template_error_keeps_the_place(tmp_path):
    """A template's own check (here: roles must alternate) fails inside jinja2; the error still
    names the file and line."""
    tokenizer = copy.deepcopy(fx.tokenizer())
    tokenizer.chat_template = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
                               "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
                               "{{ m.content }}{% endfor %}")
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    with pytest.raises(ValueError, match="chat.jsonl, line 1: Conversation roles must alternate"):
        tokenize_records(load_text_records(str(data)), tokenizer, 32, 4)
