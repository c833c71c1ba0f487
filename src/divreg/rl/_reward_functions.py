"""Reward functions with TRL's signature, ``f(prompts, completions, **columns) -> list[float |
None]``: the built-in ones, a user's by dotted path, and how a batch of completions is scored.

As in TRL's ``GRPOTrainer``, each function is called with keywords: ``prompts`` (as the data set
gives them: strings or lists of chat messages), ``completions`` (strings; for chat prompts, a
one-message list ``[{"role": "assistant", "content": text}]`` each), ``completion_ids`` (the
token ids) and every other column of the prompt set by its name, one value per completion
(``answer=[...]``). TRL also passes ``trainer_state``, ``log_extra`` and ``log_metric``; divreg
does not (a function that needs them is refused before training)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Optional, Sequence

from ..data import exact_match_reward, format_reward


def _texts(completions: Sequence) -> list[str]:
    """Completion texts, from strings or TRL's chat form (a list whose last message is the answer)."""
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def exact_match(prompts: Sequence, completions: Sequence, answer: Sequence[str], **kwargs) -> list[float]:
    """1.0 where the completion, stripped of surrounding whitespace, is exactly the ``answer``
    column's value (TRL's signature; chat completions are read by their content).

    Example:
        >>> exact_match(["2+2="], ["4 "], answer=["4"]), exact_match(["2+2="], [[{"role": "assistant", "content": "5"}]], answer=["4"])
        ([1.0], [0.0])
    """
    return exact_match_reward(_texts(completions), [str(a) for a in answer])


def integer_format(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """1.0 where the completion is one integer and nothing else (TRL's signature).

    Example:
        >>> integer_format(["2+2=", "2+2="], ["4", "four"])
        [1.0, 0.0]
    """
    return format_reward(_texts(completions))


BUILTIN_REWARDS: dict[str, Callable] = {"exact_match": exact_match, "format": integer_format}
PASSED = ("prompts", "completions", "completion_ids")


def reward_function(name: str) -> Callable:
    """The reward function called ``name``: a built-in (``exact_match``, needing an ``answer``
    column; ``format``: one integer) or a dotted path ``package.module.function`` imported from
    the current folder or an installed package (as ``python -m`` would). A name that does not
    import or is not callable is a ``ValueError`` that says so.

    Example:
        >>> reward_function("exact_match") is exact_match, reward_function("math.fsum").__name__
        (True, 'fsum')
    """
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    module_name, _, attribute = name.replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError(f"reward {name!r} is neither a built-in ({sorted(BUILTIN_REWARDS)}) nor a dotted path "
                         "package.module.function")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # a module that fails to import may raise anything
        raise ValueError(f"reward {name!r} does not import: {type(error).__name__}: {error}") from None
    if not callable(function):
        raise ValueError(f"reward {name!r} is a {type(function).__name__}, not a function")
    return function


def check_reward_signature(name: str, function: Callable, columns: Sequence[str]) -> None:
    """``ValueError`` unless ``function`` accepts TRL's keywords (``prompts``, ``completions``,
    ``completion_ids``) and every column of the prompt set by name (or ``**kwargs``), and needs
    nothing else.

    Example:
        >>> check_reward_signature("mine", lambda prompts, completions, **kwargs: [], ["answer"])
        >>> check_reward_signature("mine", lambda completions: [], [])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: reward function 'mine' cannot be called as f(prompts=..., completions=..., completion_ids=...): ...
    """
    keywords = [*PASSED, *columns]
    try:
        inspect.signature(function).bind(**{key: None for key in keywords})
    except TypeError as error:
        shown = ", ".join(f"{key}=..." for key in keywords)
        raise ValueError(f"reward function {name!r} cannot be called as f({shown}): {error}; write it as "
                         "f(prompts, completions, **kwargs) (TRL's signature) with the columns it needs by name") from None
    except ValueError:  # no signature (some builtins): checked when called
        pass


def score_completions(functions: dict[str, Callable], prompts: Sequence, completions: Sequence,
          completion_ids: Sequence[Sequence[int]], columns: dict[str, Sequence[Any]],
          places: Optional[Sequence[str]] = None) -> list[list[Optional[float]]]:
    """Each function's rewards for the completions (one list per function, in order). A function
    that raises is one ``ValueError`` naming it and the first completion it fails on (found by
    calling it on the completions one at a time) with that prompt's place in the data; a result
    that is not a list of the right length is named too (NaN and non-numbers are refused by
    :func:`combine_rewards`, which names the completion).

    Example:
        >>> score_completions({"exact_match": exact_match}, ["1+1=", "1+1="], ["2", "3"], [[5], [6]], {"answer": ["2", "2"]})
        [[1.0, 0.0]]
    """
    results = []
    for name, function in functions.items():
        try:
            rewards = function(prompts=list(prompts), completions=list(completions),
                               completion_ids=list(completion_ids), **{k: list(v) for k, v in columns.items()})
        except Exception as error:  # the user's code may raise anything: find the completion it fails on
            raise ValueError(_failure(name, function, error, prompts, completions, completion_ids, columns,
                                      places)) from None
        if not isinstance(rewards, (list, tuple)) or len(rewards) != len(completions):
            got = f"{len(rewards)} values" if isinstance(rewards, (list, tuple)) else f"a {type(rewards).__name__}"
            raise ValueError(f"reward function {name!r} returned {got} for {len(completions)} completions; it must "
                             "return one reward (a number, or None where it does not apply) per completion")
        results.append(list(rewards))
    return results


def _failure(name, function, error, prompts, completions, completion_ids, columns, places) -> str:
    for index in range(len(completions)):
        try:
            function(prompts=[prompts[index]], completions=[completions[index]], completion_ids=[completion_ids[index]],
                     **{k: [v[index]] for k, v in columns.items()})
        except Exception as single:  # noqa: BLE001 - the user's code
            place = f" (prompt from {places[index]})" if places else ""
            return (f"reward function {name!r} raised {type(single).__name__}: {single} on completion {index}"
                    f"{place}: {str(completions[index])[:80]!r}")
    return f"reward function {name!r} raised {type(error).__name__}: {error} on this batch of {len(completions)} completions"
