"""divreg rl on a user's prompt set and reward functions: the columns reach the rewards by name
and stay with their prompt, chat prompts give TRL's message lists, a reward TRL ships runs
unchanged, the defaults fit the data (no arithmetic warm-up, 256 new tokens), and every user
error stops before training in one line."""

import copy
import json

import pytest
import yaml

from divreg.config import load_config
from divreg.recipes.rl import RLConfig, run

from . import lm_fixtures

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)

REWARDS = '''
CALLS = []


def correct(prompts, completions, answer, level, completion_ids, **kwargs):
    """Written against TRL's interface: the columns by name, one value per completion."""
    assert len(prompts) == len(completions) == len(answer) == len(level) == len(completion_ids)
    for prompt, a, l in zip(prompts, answer, level):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        assert a == str(eval(text.rstrip("="))) and l == len(text) % 3, (prompt, a, l)  # the row's own values
    CALLS.append({"chat": not isinstance(completions[0], str), "count": len(completions)})
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [1.0 if t.strip() == a else 0.0 for t, a in zip(texts, answer)]


def short(completions, **kwargs):
    """None where it does not apply (an empty completion), else a small length penalty."""
    return [None if not c else -len(c) / 100 for c in completions]


def length(completions, **kwargs):
    return [-len(c) / 100 for c in completions]


def chat_form(prompts, completions, **kwargs):
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
    assert all(isinstance(c, list) and len(c) == 1 and c[0]["role"] == "assistant" for c in completions)
    return [0.0] * len(completions)
'''

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A user's folder: a tokenizer (with a chat template), a prompt set, a reward module."""
    tokenizer = copy.deepcopy(lm_fixtures.tokenizer())  # the shared one stays without a template
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    prompts = [f"{a}+{b}=" for a in range(1, 9) for b in range(1, 6)]
    with open(tmp_path / "prompts.jsonl", "w") as handle:
        for p in prompts:
            handle.write(json.dumps({"prompt": p, "answer": str(eval(p[:-1])), "level": len(p) % 3}) + "\n")
    with open(tmp_path / "chat.jsonl", "w") as handle:
        for p in prompts:
            handle.write(json.dumps({"prompt": [{"role": "user", "content": p}], "answer": str(eval(p[:-1])),
                                     "level": len(p) % 3}) + "\n")
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys
    sys.modules.pop("my_rewards", None)


def _config(workspace, *extra):
    tiny = ["tokenizer=tok", "steps=2", "prompts_per_step=4", "group_size=2", "max_new_tokens=4", "eval_every=2",
            "checkpoint_every=0", "seeds=[0]", f"output_dir={workspace / 'run'}", "policy.config.hidden_size=16",
            "policy.config.intermediate_size=32", "policy.config.num_hidden_layers=1"]
    return load_config(RLConfig, None, [*tiny, *extra])


def test_your_prompts_and_reward_functions(workspace):
    import my_rewards

    summary = run(_config(workspace, "data=prompts.jsonl", "rewards={my_rewards.correct: 1.0, my_rewards.short: 0.1}"))
    assert my_rewards.CALLS and not any(call["chat"] for call in my_rewards.CALLS)
    saved = yaml.safe_load((workspace / "run" / "config.yaml").read_text())
    assert saved["warmup_steps"] == 0 and saved["data"] == "prompts.jsonl"  # no arithmetic warm-up on your data
    records = [json.loads(line) for line in (workspace / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in records} == {"grpo-seed0"}
    evaluation = [r for r in records if r["record"] == "evaluation"][-1]
    for key in ("eval_reward", "eval_my_rewards.correct", "eval_my_rewards.short", "test_accuracy", "reward",
                "train_exact_match", "kl_exact"):
        assert key in evaluation, key
    assert 0 <= evaluation["test_accuracy"] <= 1
    assert set(summary) == {"seeds", "warmup_accuracy", "rl_accuracy", "warmup_eval_reward", "rl_eval_reward"}
    # 36 training prompts, the first tenth (4) held out: the evaluation scored them
    assert (workspace / "run" / "curves.png").exists()


def test_chat_prompts_and_a_reward_function_trl_ships(workspace):
    summary = run(_config(workspace, "data=chat.jsonl",
                          "rewards={trl.rewards.think_format_reward: 1.0, my_rewards.chat_form: 0.0}"))
    assert summary["rl_eval_reward"]["mean"] == 0.0  # a tiny untrained model does not write <think> blocks
    assert "rl_accuracy" in summary  # the answer column gives the exact match beside the rewards


def test_without_an_answer_column_the_report_is_the_rewards(workspace):
    (workspace / "open.jsonl").write_text("\n".join(json.dumps({"prompt": f"{i}+1="}) for i in range(20)) + "\n")
    summary = run(_config(workspace, "data=open.jsonl", "rewards={my_rewards.length: 1.0}"))
    assert set(summary) == {"seeds", "warmup_eval_reward", "rl_eval_reward"}


def test_the_defaults_follow_the_data(workspace):
    builtin = load_config(RLConfig, None, [])
    assert (builtin.warmup_steps, builtin.max_new_tokens) == (3000, 6)
    yours = load_config(RLConfig, None, ["data=prompts.jsonl"])
    assert (yours.warmup_steps, yours.max_new_tokens) == (0, 256)
    assert load_config(RLConfig, None, ["data=prompts.jsonl", "warmup_steps=50"]).warmup_steps == 50


@pytest.mark.parametrize("extra,message", [
    (["data=nothing.jsonl"], "data file 'nothing.jsonl' does not exist"),
    (["data=bad.jsonl"], r"bad.jsonl, line 1: has keys \['question'\]; a prompt set needs a 'prompt' column"),
    (["data=prompts.jsonl"], r"exact_match compares completions with the 'answer' column"),  # default rewards...
    (["data=prompts.jsonl", "rewards={my_rewards.nope: 1.0}"], "reward 'my_rewards.nope' does not import"),
    (["data=prompts.jsonl", "rewards={my_rewards.CALLS: 1.0}"], "is a list, not a function"),
    (["data=prompts.jsonl", "rewards={math.fsum: 1.0}"], r"cannot be called as f\(prompts=..., completions=..."),
    (["data=prompts.jsonl", "rewards={my_rewards.short: 1.0}", "warmup_steps=5"], "has no string 'completion'"),
    (["data=chat.jsonl", "tokenizer=plain", "rewards={my_rewards.short: 1.0}"],
     "a prompt of chat messages needs a tokenizer with a chat template"),
    (["data=chat.jsonl", "held_out=prompts.jsonl", "rewards={my_rewards.short: 1.0}"], "mix strings and chat messages"),
])
def test_user_errors_stop_before_training(workspace, extra, message):
    (workspace / "bad.jsonl").write_text(json.dumps({"question": "1+1="}) + "\n")
    if "data=prompts.jsonl" in extra and not any(e.startswith("rewards=") for e in extra):
        (workspace / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": f"{i}+1="}) for i in range(9)) + "\n")
    lm_fixtures.tokenizer().save_pretrained(str(workspace / "plain"))  # no chat template
    with pytest.raises(ValueError, match=message):
        run(_config(workspace, *extra))
    assert not (workspace / "run").exists()
