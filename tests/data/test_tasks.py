"""The generated arithmetic task: disjoint splits by seed, correct answers, every problem of a
difficulty reachable, the character tokenizer, and the rewards."""

import pytest

from divreg.data import (arithmetic_problems, char_tokenizer, exact_match_reward, format_reward, task_records,
                         tokenize_records)


def test_splits_are_disjoint_correct_and_seeded():
    train, test = arithmetic_problems(300, 100, digits=2, seed=3)
    assert len(train) == 300 and len(test) == 100
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len({p.prompt for p in train}) == 300  # no repeats
    for problem in train + test:
        a, op, b = problem.prompt[:-1].partition("+") if "+" in problem.prompt else problem.prompt[:-1].partition("*")
        assert problem.prompt.endswith("=") and int(problem.answer) == (int(a) + int(b) if op == "+" else int(a) * int(b))
        assert int(a) < 100 and (int(b) < 100 if op == "+" else int(b) < 10)
    assert arithmetic_problems(300, 100, digits=2, seed=3) == (train, test)
    assert arithmetic_problems(300, 100, digits=2, seed=4) != (train, test)


def test_every_problem_of_a_difficulty_is_drawn_once():
    train, test = arithmetic_problems(100 + 100 - 50, 50, digits=1, operations="+*", seed=0)
    prompts = {p.prompt for p in train + test}
    assert prompts == {f"{a}+{b}=" for a in range(10) for b in range(10)} | {f"{a}*{b}=" for a in range(10)
                                                                              for b in range(10)}
    with pytest.raises(ValueError, match="exceeds the 200 distinct problems"):
        arithmetic_problems(200, 1, digits=1)
    with pytest.raises(ValueError, match="operations must be a non-empty subset"):
        arithmetic_problems(5, 5, operations="-")


def test_char_tokenizer_round_trips_and_feeds_tokenize_records():
    tokenizer = char_tokenizer()
    ids = tokenizer("37+48=")["input_ids"]
    assert len(ids) == 6 and tokenizer.decode(ids) == "37+48=" and tokenizer.unk_token_id not in ids
    assert len(tokenizer) == 16 and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    train, _ = arithmetic_problems(4, 0, seed=1)
    examples = tokenize_records(task_records(train), tokenizer, max_length=16, prompt_len=1)
    for problem, example in zip(train, examples):
        assert tokenizer.decode(example.input_ids[:example.prompt_length]) == problem.prompt
        assert example.input_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != -100],
                                skip_special_tokens=True) == problem.answer


def test_rewards():
    assert exact_match_reward(["85", " 85 ", "8", "85a"], ["85"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward(["85", "-3", "8+5", "", "85=85"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="got 1 completions for 2 answers"):
        exact_match_reward(["1"], ["1", "2"])
