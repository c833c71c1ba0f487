"""Prompt sets for divreg rl: JSONL (gzipped too) or datasets folders with a prompt column;
strings or chat messages; every other column kept; errors name the file and line."""

import gzip
import json

import pytest

from divreg.data import char_tokenizer, load_prompt_records, tokenize_prompts


def _write(path, records, opener=open):
    with opener(path, "wt") as handle:
        handle.write("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def test_jsonl_gz_and_datasets_folders_give_the_same_records(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = [{"prompt": "1+2=", "answer": "3", "level": 1}, {"prompt": "4+4=", "answer": "8", "level": 2}]
    plain = load_prompt_records(_write(tmp_path / "p.jsonl", records))
    zipped = load_prompt_records(_write(tmp_path / "p.jsonl.gz", records, gzip.open))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "folder"))
    folder = load_prompt_records(str(tmp_path / "folder"))
    assert plain == zipped == folder == records
    assert zipped[1].where == f"{tmp_path / 'p.jsonl.gz'}, line 2" and folder[0].where.endswith("row 0")


def test_the_other_columns_travel_with_the_prompt():
    [example] = tokenize_prompts(load_prompt_records([{"prompt": "12+3=", "answer": "15", "tests": [1, 2]}]),
                                 char_tokenizer(), 32)
    assert example.prompt == "12+3=" and example.columns == {"answer": "15", "tests": [1, 2]}
    assert char_tokenizer().decode(example.prompt_ids, skip_special_tokens=True) == "12+3="


@pytest.mark.parametrize("record,message", [
    ({"question": "1+1="}, r"line 1: has keys \['question'\]; a prompt set needs a 'prompt' column"),
    ({"prompt": 5}, r"line 1: 'prompt' must be a list of chat messages"),
    ({"prompt": [{"role": "user"}]}, r"line 1: 'prompt' must be a list of chat messages"),
])
def test_a_record_of_the_wrong_form_is_named(tmp_path, record, message):
    with pytest.raises(ValueError, match=message):
        load_prompt_records(_write(tmp_path / "bad.jsonl", [record]))


def test_chat_prompts_need_a_template_and_long_prompts_are_refused_not_cut():
    tokenizer = char_tokenizer()
    chat = load_prompt_records([{"prompt": [{"role": "user", "content": "1+1="}]}])
    with pytest.raises(ValueError, match=r"record 0: a prompt of chat messages needs a tokenizer with a chat template"):
        tokenize_prompts(chat, tokenizer, 32)
    with pytest.raises(ValueError, match=r"record 0: the prompt is \d+ tokens, more than max_prompt_length=3"):
        tokenize_prompts(load_prompt_records([{"prompt": "123+456="}]), tokenizer, 3)
