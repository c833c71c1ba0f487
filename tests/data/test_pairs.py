"""Preference pairs: the three record forms TRL reads, shared prompt tokens, truncation, and a
clear error for each bad record."""

import json

import pytest

from divreg.data import char_tokenizer, load_preference_records, tokenize_pairs

from ..recipes.lm_fixtures import tokenizer as bpe_tokenizer


def test_standard_pairs_from_jsonl_share_the_prompt(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"prompt": "12+3=", "chosen": "15", "rejected": "16"},
                                                       {"prompt": "4*5=", "chosen": "20", "rejected": "2"}]))
    tokenizer = char_tokenizer()
    pairs = tokenize_pairs(load_preference_records(str(path)), tokenizer, max_length=16, first_id=7)
    assert [p.pair_id for p in pairs] == [7, 8]
    first = pairs[0]
    assert first.chosen.input_ids == tokenizer("12+3=15")["input_ids"] + [tokenizer.eos_token_id]
    assert first.rejected.input_ids[:5] == first.chosen.input_ids[:5] and first.chosen.prompt_length == 5
    assert first.rejected.labels == [-100] * 5 + tokenizer("16")["input_ids"] + [tokenizer.eos_token_id]
    truncated = tokenize_pairs(load_preference_records(str(path)), tokenizer, max_length=6)
    assert truncated[0].chosen.input_ids == tokenizer("12+3=1")["input_ids"]  # cut, EOS lost


def _chat_tokenizer():
    import copy

    tokenizer = copy.deepcopy(bpe_tokenizer())  # the shared (cached) tokenizer stays without a chat template
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tokenizer


def test_conversational_pairs_explicit_and_implicit_prompt_agree():
    tokenizer = _chat_tokenizer()
    user = [{"role": "user", "content": "the module"}]
    explicit = {"prompt": user, "chosen": [{"role": "assistant", "content": "imports"}],
                "rejected": [{"role": "assistant", "content": "returns"}]}
    implicit = {"chosen": user + explicit["chosen"], "rejected": user + explicit["rejected"]}
    a, b = tokenize_pairs(load_preference_records([explicit, implicit]), tokenizer, max_length=64)
    assert a.chosen.input_ids == b.chosen.input_ids and a.rejected.input_ids == b.rejected.input_ids
    assert a.chosen.prompt_length == a.rejected.prompt_length > 0
    assert a.chosen.input_ids != a.rejected.input_ids


@pytest.mark.parametrize("record,message", [
    ({"prompt": "1+1=", "chosen": "2"}, "expected prompt, chosen and rejected"),
    ({"prompt": "1+1=", "chosen": "2", "rejected": ["3"]}, "must all be strings, or all lists"),
    ({"chosen": "2", "rejected": "3"}, "must all be strings, or all lists"),
])
def test_bad_records_are_clear_errors(record, message):
    with pytest.raises(ValueError, match=message):
        load_preference_records([record])


def test_prompts_that_differ_or_leave_no_room_are_refused():
    tokenizer = _chat_tokenizer()
    different = {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                 "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    with pytest.raises(ValueError, match="record 0: the chosen and rejected answers do not share their prompt"):
        tokenize_pairs(load_preference_records([different]), tokenizer, max_length=64)
    with pytest.raises(ValueError, match="leaving no room for an answer within max_length=3"):
        tokenize_pairs([{"prompt": "12+34=", "chosen": "46", "rejected": "47"}], char_tokenizer(), max_length=3)
    with pytest.raises(ValueError, match=r"record 0 \(chosen\): chat 'messages' need a tokenizer with a chat"):
        tokenize_pairs([different], char_tokenizer(), max_length=64)


def test_pairs_from_a_datasets_folder(tmp_path):
    import datasets

    rows = [{"prompt": "1+2=", "chosen": "3", "rejected": "4"}, {"prompt": "5+5=", "chosen": "10", "rejected": "11"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "pairs"))
    pairs = tokenize_pairs(load_preference_records(str(tmp_path / "pairs")), char_tokenizer(), max_length=16)
    assert [p.chosen.input_ids[:p.chosen.prompt_length] for p in pairs] == [char_tokenizer()(r["prompt"])["input_ids"]
                                                                            for r in rows]


def test_unknown_characters_are_refused_and_a_chat_eos_is_not_doubled():
    with pytest.raises(ValueError, match="record 0: its text has characters the tokenizer cannot encode"):
        tokenize_pairs([{"prompt": "a+b=", "chosen": "x", "rejected": "y"}], char_tokenizer(), max_length=16)
    tokenizer = _chat_tokenizer()
    eos = tokenizer.eos_token
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}" + eos + "{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    pair = tokenize_pairs([{"prompt": [{"role": "user", "content": "the"}],
                            "chosen": [{"role": "assistant", "content": "module"}],
                            "rejected": [{"role": "assistant", "content": "class"}]}], tokenizer, max_length=64)[0]
    for example in (pair.chosen, pair.rejected):
        assert example.input_ids[-1] == tokenizer.eos_token_id and example.input_ids[-2] != tokenizer.eos_token_id


def test_a_bad_pair_in_a_file_names_the_file_and_the_one_based_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"})
    path.write_text("\n".join([good, "", good, json.dumps({"prompt": "2+2=", "chosen": "4"})]))
    with pytest.raises(ValueError, match=r"pairs.jsonl, line 4: has keys \['chosen', 'prompt'\]"):
        load_preference_records(str(path))
    path.write_text("\n".join([good, json.dumps({"prompt": [{"role": "user", "content": "hi"}],
                                                 "chosen": [{"role": "assistant"}], "rejected": []})]))
    with pytest.raises(ValueError, match="pairs.jsonl, line 2: 'chosen' must be a list of chat messages"):
        load_preference_records(str(path))
    path.write_text("\n".join([good, good, json.dumps({"prompt": "1234567890=", "chosen": "1", "rejected": "2"})]))
    with pytest.raises(ValueError, match="pairs.jsonl, line 3: its prompt has 11 tokens"):
        tokenize_pairs(load_preference_records(str(path)), char_tokenizer(), max_length=8)
