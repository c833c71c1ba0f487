"""The distill-lm and cache-teacher commands end to end, on seconds-long settings."""

import json
import signal
import subprocess
import sys
import time

import datasets
import pytest
import torch

from divreg.config import load_config
from divreg.data import IGNORE_INDEX, load_text_records, tokenize_records
from divreg.recipes.lm_distillation import DistillLMConfig, run
from divreg.recipes.lm_distillation.cache import CacheTeacherConfig
from divreg.recipes.lm_distillation.cache import run as cache_teacher

from ..launch import accelerate_prefix
from . import lm_fixtures as fx

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)


def _config(output_dir, *extra, **overrides):
    return load_config(DistillLMConfig, None, [*fx.tiny_config_overrides(output_dir, **overrides), *extra])


def test_builtin_run_writes_everything_and_the_teacher_reloads(tmp_path, capsys):
    summary = run(_config(tmp_path / "a"))
    assert list(summary) == ["teacher", "ce_only", "forward_kl", "reverse_kl", "jsd", "on_policy_jsd"]
    for name, metrics in summary.items():
        assert metrics["perplexity"] > 1 and (name == "teacher" or metrics["kl_to_teacher"] >= 0)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved == summary
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {r["run"] for r in records} == {"teacher", "ce_only", "forward_kl", "reverse_kl", "jsd", "on_policy_jsd"}
    assert all(r["divergence"] > 0 and r["ce"] == 0 for r in records if r["run"] == "forward_kl")
    assert all(r["ce"] > 0 and r["loss"] == pytest.approx(r["ce"]) for r in records if r["run"] == "ce_only")
    assert {r["source"] for r in records if r["run"] == "on_policy_jsd"} == {"generate"}  # lmbda = 1
    assert (tmp_path / "a" / "curves.png").stat().st_size > 5000
    # the real loading code: the saved teacher and tokenizer, by path
    reloaded = run(_config(tmp_path / "b", "methods=[{name: fkl, divergence: forward_kl}]",
                           f"teacher.path={tmp_path / 'a' / 'teacher'}", f"tokenizer={tmp_path / 'a' / 'tokenizer'}",
                           "teacher_train_steps=0"))
    assert reloaded["teacher"]["perplexity"] == pytest.approx(summary["teacher"]["perplexity"], rel=1e-6)
    assert "| run" in capsys.readouterr().out


def test_cached_teacher_and_distillm_adaptive(tmp_path):
    first = tmp_path / "first"
    run(_config(first, "methods=[{name: fkl, divergence: forward_kl}]"))
    cache_config = load_config(CacheTeacherConfig, None, [
        f"teacher.path={first / 'teacher'}", f"tokenizer={first / 'tokenizer'}", "seq_len=24", "prompt_len=6", "top_k=8",
        f"output_dir={tmp_path / 'cache'}"])
    cache_teacher(cache_config)
    common = [f"tokenizer={first / 'tokenizer'}", f"teacher.path={first / 'teacher'}", "teacher_train_steps=0"]
    cached = run(_config(tmp_path / "cached", *common, f"teacher_cache={tmp_path / 'cache'}",
                         "methods=[{name: cached_fkl, divergence: forward_kl}]"))
    assert cached["cached_fkl"]["kl_to_teacher"] >= 0
    # what the top-8 truncation costs: in the cache's manifest (a student at uniform) and at every evaluation
    truncation = json.loads((tmp_path / "cache" / "manifest.json").read_text())["truncation"]
    assert 0 < truncation["tail_mass_mean"] < 1 and truncation["tail_mass_p90"] <= truncation["tail_mass_max"]
    assert truncation["uniform_student"]["gap"] >= 0 and truncation["positions"] > 100
    evaluations = [json.loads(line) for line in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    assert evaluations and all(r["topk_gap"] >= 0 and 0 < r["topk_grad_cosine"] <= 1 + 1e-9 for r in evaluations
                               if r["run"] == "cached_fkl")
    with pytest.raises(ValueError, match="temperature"):
        run(_config(tmp_path / "hot", *common, f"teacher_cache={tmp_path / 'cache'}", "temperature=2.0",
                    "methods=[{name: fkl, divergence: forward_kl}]"))
    # without teacher.path: the teacher the cache recorded (not a new default one trained here), the same KL
    recorded = run(_config(tmp_path / "recorded", f"tokenizer={first / 'tokenizer'}", f"teacher_cache={tmp_path / 'cache'}",
                           "methods=[{name: cached_fkl, divergence: forward_kl}]"))
    assert recorded["cached_fkl"]["kl_to_teacher"] == cached["cached_fkl"]["kl_to_teacher"]
    assert not (tmp_path / "recorded" / "teacher").exists() and not (tmp_path / "recorded" / "checkpoints" / "teacher.pt").exists()
    # another teacher's weights by teacher.path: refused, the KL would be to another teacher
    fx.model(seed=5, vocab_size=300).model.save_pretrained(tmp_path / "other_teacher")
    with pytest.raises(ValueError, match="is not the one that wrote teacher_cache"):
        run(_config(tmp_path / "other", f"tokenizer={first / 'tokenizer'}", f"teacher.path={tmp_path / 'other_teacher'}",
                    f"teacher_cache={tmp_path / 'cache'}", "methods=[{name: fkl, divergence: forward_kl}]"))
    assert not (tmp_path / "other" / "checkpoints").exists()
    # the recorded teacher gone: refused with what to do; kl_eval=false trains from the cache alone
    (first / "teacher").rename(first / "moved_teacher")
    with pytest.raises(ValueError, match="which is not a folder here; pass teacher.path"):
        run(_config(tmp_path / "gone", f"tokenizer={first / 'tokenizer'}", f"teacher_cache={tmp_path / 'cache'}",
                    "methods=[{name: fkl, divergence: forward_kl}]"))
    alone = run(_config(tmp_path / "alone", f"tokenizer={first / 'tokenizer'}", f"teacher_cache={tmp_path / 'cache'}",
                        "kl_eval=false", "methods=[{name: fkl, divergence: forward_kl}]"))
    assert "kl_to_teacher" not in alone["fkl"] and "teacher" not in alone
    (first / "moved_teacher").rename(first / "teacher")
    # a cache written before teachers were recorded by their weights: refused, never checked by path alone
    manifest_path = tmp_path / "cache" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "teacher_sha256"}))
    with pytest.raises(ValueError, match="does not record which teacher wrote it"):
        run(_config(tmp_path / "old", f"tokenizer={first / 'tokenizer'}", f"teacher_cache={tmp_path / 'cache'}",
                    "methods=[{name: fkl, divergence: forward_kl}]"))
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="need a live teacher"):
        _config(tmp_path / "x", f"teacher_cache={tmp_path / 'cache'}",
                "methods=[{name: gkd, divergence: generalized_jsd, lmbda: 0.5}]")
    adaptive = run(_config(tmp_path / "adaptive", *common, "replay_init=0.5", "replay_capacity=8",
                           "methods=[{name: distillm, divergence: skew_kl, divergence_options: {alpha: 0.1}, adaptive_off_policy: true}]"))
    records = [json.loads(line) for line in (tmp_path / "adaptive" / "metrics.jsonl").read_text().splitlines()]
    assert "replay_threshold" in records[-1] and adaptive["distillm"]["perplexity"] > 1


def test_cross_tokenizer_teacher_needs_uld(tmp_path):
    other = fx.tokenizer(280)
    other.save_pretrained(tmp_path / "other_tokenizer")
    teacher = fx.model(seed=3, vocab_size=280)
    teacher.model.save_pretrained(tmp_path / "other_teacher")
    first = tmp_path / "first"
    run(_config(first, "methods=[{name: fkl, divergence: forward_kl}]"))
    common = [f"tokenizer={first / 'tokenizer'}", f"teacher.path={tmp_path / 'other_teacher'}",
              f"teacher.tokenizer={tmp_path / 'other_tokenizer'}", "teacher_train_steps=0",
              "methods=[{name: uld, divergence: forward_kl}]"]
    with pytest.raises(ValueError, match=r"differ.*vocab_policy=uld"):
        run(_config(tmp_path / "strict", *common))
    summary = run(_config(tmp_path / "uld", *common, "vocab_policy=uld"))
    assert summary["uld"]["perplexity"] > 1 and "kl_to_teacher" not in summary["uld"]


def test_a_teacher_folder_with_its_own_tokenizer_is_compared_by_fingerprint(tmp_path):
    """Issue 11 item 5: a teacher folder that ships a 280-token tokenizer, run with the 300-token
    tokenizer=, used to train on the teacher's logits cut to the run's columns; now the folder's
    tokenizer is the teacher's, so the strict policy refuses and ULD applies. The same check
    guards cache-teacher. A folder that ships the run's own tokenizer is accepted."""
    from divreg.models import ModelSource, model_tokenizer

    teacher = fx.model(seed=3, vocab_size=280)
    teacher.model.save_pretrained(tmp_path / "own")
    fx.tokenizer(280).save_pretrained(tmp_path / "own")
    run_tokenizer = fx.tokenizer(300)
    run_tokenizer.save_pretrained(tmp_path / "run_tokenizer")
    assert len(model_tokenizer(ModelSource(path=str(tmp_path / "own")), run_tokenizer)) == 280
    common = [f"tokenizer={tmp_path / 'run_tokenizer'}", f"teacher.path={tmp_path / 'own'}", "teacher_train_steps=0",
              "methods=[{name: fkl, divergence: forward_kl}]"]
    with pytest.raises(ValueError, match=r"differ.*vocab_policy=uld"):
        run(_config(tmp_path / "strict", *common))
    assert not (tmp_path / "strict" / "checkpoints" / "fkl.pt").exists()
    summary = run(_config(tmp_path / "uld", *common, "vocab_policy=uld"))
    assert summary["fkl"]["perplexity"] > 1 and "kl_to_teacher" not in summary["fkl"]
    with pytest.raises(ValueError, match="ships its own tokenizer"):
        cache_teacher(load_config(CacheTeacherConfig, None, [
            f"teacher.path={tmp_path / 'own'}", f"tokenizer={tmp_path / 'run_tokenizer'}", "seq_len=24", "prompt_len=6",
            f"output_dir={tmp_path / 'cache'}"]))
    same = fx.model(seed=4)
    same.model.save_pretrained(tmp_path / "same")
    run_tokenizer.save_pretrained(tmp_path / "same")
    assert model_tokenizer(ModelSource(path=str(tmp_path / "same")), run_tokenizer) is run_tokenizer
    summary = run(_config(tmp_path / "shared", *common[:1], f"teacher.path={tmp_path / 'same'}", *common[2:]))
    assert summary["fkl"]["kl_to_teacher"] >= 0 and summary["teacher"]["perplexity"] > 1


@pytest.mark.parametrize("bad", ["student.config.model_type=no_such_model", "student.path=no/such/folder"])
def test_a_bad_student_stops_the_run_before_the_teacher_trains(tmp_path, bad):
    """Issue 11 item 10 (LM recipe): the student and every method's loss are built before the
    teacher is trained, so a bad student costs no teacher training (a bad method stops the run
    when the config is parsed)."""
    with pytest.raises(ValueError):
        run(_config(tmp_path / "run", bad, "teacher_train_steps=200"))
    assert not (tmp_path / "run" / "checkpoints" / "teacher.pt").exists()
    assert not (tmp_path / "run" / "teacher").exists()


def test_jsonl_and_datasets_records_and_chat_templates(tmp_path):
    import copy

    tokenizer = copy.deepcopy(fx.tokenizer())  # given a chat template below: the shared one stays without
    records = [{"prompt": "def f(x):", "completion": " return x"}, {"text": "assert statements are debugging aids"}]
    examples = tokenize_records(records, tokenizer, max_length=64, prompt_len=3)
    prompt_ids = tokenizer("def f(x):")["input_ids"]
    assert examples[0].labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert examples[0].input_ids[-1] == tokenizer.eos_token_id and examples[1].prompt_length == 3
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records * 20))
    first = tmp_path / "first"
    run(_config(first, "methods=[{name: fkl, divergence: forward_kl}]"))
    common = [f"tokenizer={first / 'tokenizer'}", f"teacher.path={first / 'teacher'}", "teacher_train_steps=0",
              "methods=[{name: fkl, divergence: forward_kl}]", "batch_size=4"]
    assert run(_config(tmp_path / "jsonl", *common, f"data={path}"))["fkl"]["perplexity"] > 1
    datasets.Dataset.from_list([records[1]] * 40).save_to_disk(str(tmp_path / "hf"))  # one schema per table
    assert run(_config(tmp_path / "hf_run", *common, f"data={tmp_path / 'hf'}"))["fkl"]["perplexity"] > 1
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    chat = tokenize_records([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
                            tokenizer, 64, 3)[0]
    prompt = tokenizer("<user>hi<assistant>", add_special_tokens=False)["input_ids"]  # the rendered prompt's tokens
    assert chat.input_ids == prompt + tokenizer("yo", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert chat.prompt_length == len(prompt) and chat.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="expected prompt\\+completion, text or messages"):
        load_text_records([{"question": "?"}])


def _launch(arguments, processes=1):
    prefix = [sys.executable, "-m", "divreg.cli"] if processes == 1 else [*accelerate_prefix(processes), "-m",
                                                                           "divreg.cli"]
    return subprocess.Popen([*prefix, "distill-lm", *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    arguments = fx.tiny_config_overrides("OUT", steps=24, checkpoint_every=3, eval_every=6)
    arguments.append("methods=[{name: gkd, divergence: generalized_jsd, lmbda: 0.5}]")
    reference = _launch([a.replace("OUT", str(tmp_path / "reference")) for a in arguments])
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    killed = tmp_path / "killed"
    victim = _launch([a.replace("OUT", str(killed)) for a in arguments])
    target = killed / "checkpoints" / "gkd.pt"
    deadline, state = time.time() + 200, None
    while time.time() < deadline and victim.poll() is None:
        if target.exists():
            state = torch.load(target, weights_only=False)
            if not state["state"]["done"] and state["state"]["step"] >= 6:
                break
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert state is not None and not state["state"]["done"]
    resumed = _launch([a.replace("OUT", str(killed)) for a in arguments] + ["resume=true"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    for name in ("teacher.pt", "gkd.pt"):
        expected = torch.load(tmp_path / "reference" / "checkpoints" / name, weights_only=False)["model"]
        got = torch.load(killed / "checkpoints" / name, weights_only=False)["model"]
        assert all(torch.equal(expected[key], got[key]) for key in expected), name


@pytest.mark.alone  # two processes or a Ray cluster: make test runs it after the parallel tier
def test_two_processes_match_one(tmp_path):
    arguments = fx.tiny_config_overrides("OUT") + ["methods=[{name: fkl, divergence: forward_kl}]"]
    one = _launch([a.replace("OUT", str(tmp_path / "one")) for a in arguments])
    two = _launch([a.replace("OUT", str(tmp_path / "two")) for a in arguments], processes=2)
    for process in (one, two):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # the same global batches and token normalization: only summation order differs (measured:
    # perplexity and KL within 3e-8 relative)
    assert set(single) == set(double) and "kl_to_teacher" in single["fkl"]
    for name in single:
        for key, value in single[name].items():
            assert double[name][key] == pytest.approx(value, rel=1e-6), (name, key)


def test_sequence_kd_padded_teacher_embedding_low_precision_teacher_and_fused_path(tmp_path):
    """Sequence-level KD (teacher generations), a teacher whose embedding has 16 padding rows
    past the tokenizer (sliced off by the vocabulary policy), a bfloat16 live teacher and the
    fused student path, together."""
    summary = run(_config(tmp_path, "teacher.config.vocab_size=316", "teacher_dtype=bfloat16", "fused=true",
                          "methods=[{name: seqkd, divergence: forward_kl, sequence_kd: true}]"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["source"] for r in records if r["run"] == "seqkd"} == {"teacher"}
    assert summary["seqkd"]["kl_to_teacher"] >= 0 and summary["seqkd"]["perplexity"] > 1
    teacher_state = torch.load(tmp_path / "checkpoints" / "teacher.pt", weights_only=False)["model"]
    assert teacher_state["model.lm_head.weight"].shape[0] == 316


def test_teacher_cache_is_checked_by_content_at_start_up(tmp_path, monkeypatch):
    """The cache records a fingerprint of its training examples: the same JSONL by a relative or
    an absolute path is accepted; a file changed under the same name, or another held-out split,
    is refused before the teacher or any student is built."""
    first = tmp_path / "first"
    run(_config(first, "methods=[{name: fkl, divergence: forward_kl}]"))
    records = [{"prompt": f"def f{i}(x):", "completion": f" return x + {i}"} for i in range(40)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    monkeypatch.chdir(tmp_path)
    cache_teacher(load_config(CacheTeacherConfig, None, [
        f"teacher.path={first / 'teacher'}", f"tokenizer={first / 'tokenizer'}", "data=data.jsonl", "seq_len=24",
        "prompt_len=6", "top_k=8", f"output_dir={tmp_path / 'cache'}"]))
    common = [f"tokenizer={first / 'tokenizer'}", f"teacher.path={first / 'teacher'}", "teacher_train_steps=0",
              f"teacher_cache={tmp_path / 'cache'}", "batch_size=4", "methods=[{name: c, divergence: forward_kl}]"]
    assert run(_config(tmp_path / "absolute", *common, f"data={data}"))["c"]["perplexity"] > 1  # other path, same file
    with pytest.raises(ValueError, match="other training examples than this run's"):
        run(_config(tmp_path / "split", *common, f"data={data}", f"held_out={data}"))
    data.write_text("\n".join(json.dumps({**r, "completion": r["completion"] + " * 2"}) for r in records))
    with pytest.raises(ValueError, match="other training examples than this run's"):
        run(_config(tmp_path / "changed", *common, "data=data.jsonl"))
    assert not (tmp_path / "changed").exists()  # refused at start-up, before anything was written


def test_arithmetic_task_compares_students_by_generation_exact_match(tmp_path, capsys):
    """data=arithmetic: the generated task of divreg rl, a character tokenizer, and every run's
    exact match of its greedy answers on the held-out problems (metrics, log and table)."""
    summary = run(_config(tmp_path / "a", "data=arithmetic", "digits=1", "train_size=60",
                          "test_size=20", "methods=[{name: fkl, divergence: forward_kl}]", "seq_len=16",
                          "prompt_len=1", "max_new_tokens=4"))
    for name in ("teacher", "fkl"):
        assert 0 <= summary[name]["exact_match"] <= 1
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("exact_match" in r for r in records)
    assert "exact_match" in capsys.readouterr().out
    with pytest.raises(ValueError, match="operations must be made of"):
        _config(tmp_path / "b", "data=arithmetic", "operations=/")
    with pytest.raises(ValueError, match="'task_digits' was renamed: use digits"):  # the old name, one clear line
        _config(tmp_path / "b", "task_digits=1")


def test_several_seeds_train_one_student_per_method_and_seed(tmp_path):
    """seeds=[0, 1]: one teacher (data_seed), a student per method and seed (its own init, data order
    and checkpoint), metrics.json with the mean and sample std over the seeds and each seed's own."""
    summary = run(_config(tmp_path / "a", "seeds=[0,1]", "methods=[{name: fkl, divergence: forward_kl}]"))
    each = [summary["seeds"][s]["fkl"]["perplexity"] for s in ("0", "1")]
    assert each[0] != each[1]  # other initializations and data orders
    assert summary["fkl"]["perplexity"]["mean"] == pytest.approx(sum(each) / 2, rel=1e-12)
    assert summary["fkl"]["perplexity"]["std"] == pytest.approx(abs(each[0] - each[1]) / 2 ** 0.5, rel=1e-9)
    assert {p.name for p in (tmp_path / "a" / "checkpoints").iterdir()} >= {"teacher.pt", "fkl-seed0.pt", "fkl-seed1.pt"}
    with pytest.raises(ValueError, match="'seed' was renamed: use seeds"):
        _config(tmp_path / "b", "seed=3")


def test_an_ensemble_teacher_in_distill_lm_and_cache_teacher(tmp_path):
    """Issue 32 item 2: ``teacher.members`` (K saved models sharing the run's tokenizer, logits
    averaged) is the teacher of distill-lm (live, dense: nothing trained here, the KL column is to
    the ensemble) and of cache-teacher (the cache records the members; a later run with the cache
    alone reports the KL to the same ensemble, checked by its weights); real plus teacher-generated
    text (``sequence_kd: 0.5``) runs on the ensemble's samples."""
    from divreg.models import LogitEnsemble, load_ensemble
    from divreg.recipes.lm_distillation import DistillLMConfig as Config
    from divreg.recipes.lm_distillation.trainer import evaluate

    tokenizer = fx.tokenizer(300)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    members = []
    for seed in (1, 2):
        fx.model(seed=seed).model.save_pretrained(tmp_path / f"member{seed}")
        members.append(str(tmp_path / f"member{seed}"))
    team = f"teacher.members=[{','.join(members)}]"
    common = [f"tokenizer={tmp_path / 'tokenizer'}", team, "steps=12",
              "methods=[{name: fkl, divergence: forward_kl}, {name: mixed, divergence: forward_kl, weight: 0.0, "
              "ce_weight: 1.0, sequence_kd: 0.5}]"]
    assert load_config(Config, None, [*fx.tiny_config_overrides(tmp_path / "x"), *common]).teacher.config == {}
    summary = run(_config(tmp_path / "live", *common))
    assert not (tmp_path / "live" / "teacher").exists() and not (tmp_path / "live" / "checkpoints" / "teacher.pt").exists()
    # the teacher row and the KL column are the ensemble's: recomputed here from the members
    ensemble = load_ensemble(members, tokenizer)
    assert isinstance(ensemble, LogitEnsemble) and len(ensemble.members) == 2
    _, held_out = load_text_examples_for(tmp_path / "live")
    expected = evaluate(ensemble.eval(), None, held_out, tokenizer.pad_token_id)
    assert summary["teacher"]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)
    records = [json.loads(line) for line in (tmp_path / "live" / "metrics.jsonl").read_text().splitlines()]
    assert {r["source"] for r in records if r["run"] == "fkl" and "source" in r} == {"dataset"}
    assert "teacher" in {r["source"] for r in records if r["run"] == "mixed" and "source" in r}
    # cache-teacher from the ensemble, then distill-lm from the cache alone: the KL to the same ensemble
    cache_teacher(load_config(CacheTeacherConfig, None, [
        team, f"tokenizer={tmp_path / 'tokenizer'}", "seq_len=24", "prompt_len=6", "top_k=8",
        f"output_dir={tmp_path / 'cache'}"]))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["teacher_members"] == members and manifest["teacher_sha256"] == ensemble.fingerprint()
    cached = run(_config(tmp_path / "cached", f"tokenizer={tmp_path / 'tokenizer'}", f"teacher_cache={tmp_path / 'cache'}",
                         "methods=[{name: fkl, divergence: forward_kl}]"))
    assert cached["fkl"]["kl_to_teacher"] > 0 and not (tmp_path / "cached" / "teacher").exists()
    # the probability mixture is another teacher: refused against this cache
    with pytest.raises(ValueError, match="is not the one that wrote teacher_cache"):
        run(_config(tmp_path / "mixture", f"tokenizer={tmp_path / 'tokenizer'}", team, "teacher.combine=probabilities",
                    f"teacher_cache={tmp_path / 'cache'}", "methods=[{name: fkl, divergence: forward_kl}]"))
    # what an ensemble teacher cannot be given with, each one line before anything runs
    for extra, message in ((["teacher.path=x"], "leave teacher.path"), (["fused=true"], "set fused=false"),
                           (["vocab_policy=uld"], "vocab_policy=uld"), (["teacher.combine=max"], "teacher.combine")):
        with pytest.raises(ValueError, match=message):
            load_config(Config, None, [*fx.tiny_config_overrides(tmp_path / "bad"), *common, *extra])
    assert not (tmp_path / "bad").exists()
    # a member with its own, different tokenizer is refused as the ensemble loads
    fx.model(seed=3, vocab_size=280).model.save_pretrained(tmp_path / "odd")
    fx.tokenizer(280).save_pretrained(tmp_path / "odd")
    with pytest.raises(ValueError, match="another tokenizer"):
        load_ensemble([members[0], str(tmp_path / "odd")], tokenizer)


def load_text_examples_for(output_dir):
    """The (train, held-out) examples of a builtin distill-lm run in ``output_dir``, from its saved config."""
    from omegaconf import OmegaConf

    from divreg.data import load_text_examples
    from divreg.models import load_tokenizer

    config = OmegaConf.load(output_dir / "config.yaml")
    tokenizer = load_tokenizer(str(output_dir / "tokenizer")) if (output_dir / "tokenizer").exists() else \
        load_tokenizer(config.tokenizer)
    return load_text_examples(config.data, config.held_out, tokenizer, config.seq_len, config.prompt_len)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_sequence_kd_as_a_probability_mixes_real_and_teacher_text(fraction):
    """``sequence_kd: p``: each step that would read the dataset reads the teacher's generations
    instead with probability p (its own seeded draw: the same on every process and on resume);
    ``true`` is 1, every such step (sequence-level KD as before)."""
    from divreg.recipes.lm_distillation.config import LMMethod
    from divreg.recipes.lm_distillation.sources import StepSource

    config = _config("unused")
    method = LMMethod(name="m", sequence_kd=fraction)
    teacher = fx.model(seed=1)
    source = StepSource(config, method, fx.examples(), fx.tokenizer(300), teacher=teacher, seed=4)
    origins = [source.examples(step, None, 0, 1)[1] for step in range(200)]
    share = origins.count("teacher") / len(origins)
    assert set(origins) <= {"teacher", "dataset"}
    assert abs(share - fraction) <= 3 * (fraction * (1 - fraction) / 200) ** 0.5 + 1e-12, share
    assert [source.examples(step, None, 0, 1)[1] for step in range(20)] == origins[:20]  # seeded, repeatable
    assert LMMethod(name="b", sequence_kd=True).sequence_kd == 1.0
    with pytest.raises(ValueError, match="sequence_kd must be"):
        LMMethod(name="c", sequence_kd=1.5)
