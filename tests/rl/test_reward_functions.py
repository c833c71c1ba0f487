"""Reward functions with TRL's signature: built-ins, a user's by dotted path, the signature check,
and one clear line for every way a reward function can go wrong."""

import math
import sys

import pytest

from divreg.rl import (BUILTIN_REWARDS, check_reward_signature, combine_rewards, exact_match, integer_format,
                       reward_function, score_completions)


def test_builtins_take_trl_keywords_and_read_chat_completions():
    chat = [[{"role": "assistant", "content": " 12 "}], [{"role": "assistant", "content": "twelve"}]]
    assert exact_match(prompts=["a", "b"], completions=chat, answer=["12", "12"], completion_ids=[[1], [2]]) == [1.0, 0.0]
    assert integer_format(prompts=["a", "b"], completions=chat, completion_ids=[[1], [2]], answer=["x", "y"]) == [1.0, 0.0]
    assert set(BUILTIN_REWARDS) == {"exact_match", "format"}


def test_a_trl_reward_function_is_imported_and_called_unchanged():
    think = reward_function("trl.rewards.think_format_reward")  # shipped by TRL, written for GRPOTrainer
    completions = [[{"role": "assistant", "content": "<think>\nhm\n</think>\n4"}], [{"role": "assistant", "content": "4"}]]
    check_reward_signature("trl.rewards.think_format_reward", think, ["answer", "difficulty"])
    assert score_completions({"think": think}, [[{"role": "user", "content": "2+2?"}]] * 2, completions, [[1], [2]],
                             {"answer": ["4", "4"], "difficulty": [1, 1]}) == [[1.0, 0.0]]


def test_columns_reach_the_function_by_name_in_completion_order(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(
        "def graded(prompts, completions, answer, weight, completion_ids, **kwargs):\n"
        "    return [w * (c == a) for c, a, w in zip(completions, answer, weight)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    function = reward_function("user_rewards.graded")
    check_reward_signature("user_rewards.graded", function, ["answer", "weight"])
    assert score_completions({"graded": function}, ["p", "q", "r"], ["1", "2", "3"], [[1], [2], [3]],
                             {"answer": ["1", "0", "3"], "weight": [0.5, 1.0, 2.0]}) == [[0.5, 0.0, 2.0]]


@pytest.mark.parametrize("name,message", [
    ("length", r"neither a built-in \(\['exact_match', 'format'\]\) nor a dotted path"),
    ("no_such_module_here.reward", "does not import: ModuleNotFoundError"),
    ("math.pi", "is a float, not a function"),
    ("math.no_such_function", "does not import: AttributeError"),
])
def test_a_reward_that_cannot_be_had_is_one_line(name, message):
    with pytest.raises(ValueError, match=message):
        reward_function(name)


def test_a_module_that_fails_on_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"reward 'broken_rewards.r' does not import: RuntimeError: needs a GPU"):
        reward_function("broken_rewards.r")
    sys.modules.pop("broken_rewards", None)


@pytest.mark.parametrize("function,columns", [
    (lambda completions: [], []),  # no **kwargs: cannot take prompts, completion_ids
    (lambda prompts, completions, completion_ids, answer: [], ["answer", "difficulty"]),  # a column it cannot take
    (lambda prompts, completions, solution, **kwargs: [], ["answer"]),  # needs a column the data does not have
])
def test_a_wrong_signature_is_refused_before_training(function, columns):
    with pytest.raises(ValueError, match=r"cannot be called as f\(prompts=\.\.\., completions=\.\.\., completion_ids=\.\.\."):
        check_reward_signature("mine", function, columns)


def test_a_raising_function_is_named_with_the_completion_and_its_prompt():
    def picky(prompts, completions, **kwargs):
        return [1.0 / len(c) for c in completions]  # ZeroDivisionError on the empty completion

    with pytest.raises(ValueError, match=r"reward function 'picky' raised ZeroDivisionError: float division by zero on "
                                         r"completion 2 \(prompt from data.jsonl, line 7\): ''"):
        score_completions({"picky": picky}, ["a", "b", "c"], ["x", "yy", ""], [[1], [2], [3]], {},
                          ["data.jsonl, line 5", "data.jsonl, line 6", "data.jsonl, line 7"])


@pytest.mark.parametrize("returned,message", [
    ([1.0], r"returned 1 values for 2 completions"),
    (3.0, r"returned a float for 2 completions"),
])
def test_a_wrong_length_or_type_is_named(returned, message):
    with pytest.raises(ValueError, match=message):
        score_completions({"odd": lambda prompts, completions, **kwargs: returned}, ["a", "b"], ["x", "y"], [[1], [2]], {})


def test_nan_and_all_none_are_refused_by_the_combination():
    per_function = score_completions({"nan": lambda prompts, completions, **kwargs: [math.nan, 1.0]}, ["a", "b"],
                                     ["x", "y"], [[1], [2]], {})
    with pytest.raises(ValueError, match=r"reward function 'nan' returned nan for completion 0"):
        combine_rewards(per_function, ["nan"])
    none = score_completions({"skip": lambda prompts, completions, **kwargs: [None, 1.0]}, ["a", "b"], ["x", "y"],
                             [[1], [2]], {})
    with pytest.raises(ValueError, match=r"every reward function returned None for completion\(s\) \[0\]"):
        combine_rewards(none, ["skip"])
