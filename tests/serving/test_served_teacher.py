"""The served teacher against a real vLLM server (the session's, tests/serving/conftest.py): its
top-k log-probs and tail mass equal the same model's in-process log-softmax, its signal equals a
teacher cache written in-process, and every bad use is one line."""

import math

import pytest
import torch

from divreg.data import collate
from divreg.serving import ServedTeacher, ServerError
from divreg.targets import TeacherCache, TeacherCacheWriter

from ..recipes import lm_fixtures as fx

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.alone]  # a vLLM server takes the cores

TOP_K = 8


def _in_process(model, sequence: list[int], k: int = TOP_K):
    """(ids (L-1, k), log-probs, tail log-mass) of the model's own log-softmax."""
    with torch.no_grad():
        ids = torch.tensor([sequence])
        log_p = torch.log_softmax(model(ids, torch.ones_like(ids))[0, :-1].double(), -1)
    top, top_ids = log_p.topk(k, -1)
    return top_ids, top, torch.logsumexp(log_p.scatter(-1, top_ids, -math.inf), -1)


def test_top_k_and_tail_mass_equal_the_model_in_process(served):
    server, _, model, tokenizer = served
    teacher = ServedTeacher(server.url, TOP_K, tokenizer)
    sequences = [example.input_ids for example in fx.examples(6)] + [[5, 9], list(range(3, 40))]
    for sequence, signal in zip(sequences, teacher.score(sequences), strict=True):
        ids, logprobs, tail = _in_process(model, sequence)
        assert signal.ids.shape == ids.shape == (len(sequence) - 1, TOP_K)
        _assert_same_top_k(ids, logprobs, signal.ids, signal.logprobs.double())
        torch.testing.assert_close(signal.tail_logmass.double().exp(), tail.exp(), atol=1e-5, rtol=0)


def test_the_signal_of_a_batch_equals_a_cache_written_in_process(served, tmp_path):
    server, _, model, tokenizer = served
    examples = fx.examples(8)
    writer = TeacherCacheWriter(str(tmp_path / "cache"), TOP_K, 1.0)
    for example in examples:
        with torch.no_grad():
            ids = torch.tensor([example.input_ids])
            writer.add(example.example_id, model(ids, torch.ones_like(ids))[0, :-1])
    writer.close()
    batch = collate(examples, tokenizer.pad_token_id)
    cached = TeacherCache(str(tmp_path / "cache")).signal(batch)
    served_signal = ServedTeacher(server.url, TOP_K, tokenizer, batch_size=3, concurrency=2).signal(batch)
    real = batch["labels"][:, 1:] != -100  # (padding rows hold no mass in either)
    _assert_same_top_k(cached.ids[real], cached.logprobs[real], served_signal.ids[real], served_signal.logprobs[real])
    torch.testing.assert_close(served_signal.tail_logmass.exp(), cached.tail_logmass.exp(), atol=1e-5, rtol=0)


def test_bad_uses_are_one_line(served):
    server, _, _, tokenizer = served
    with pytest.raises(ValueError, match="temperature=0.5 cannot be applied exactly"):
        ServedTeacher(server.url, TOP_K, tokenizer, temperature=0.5)
    other = fx.tokenizer(vocab_size=280)  # another BPE vocabulary
    with pytest.raises(ValueError, match="tokenizes .* as .*serve the model that goes with this tokenizer"):
        ServedTeacher(server.url, TOP_K, other)
    with pytest.raises(ServerError, match="answered /v1/completions with 400"):
        ServedTeacher(server.url, 65, tokenizer).score([[5, 6, 7]])  # above the server's --max-logprobs 64
    with pytest.raises(ValueError, match="is not a URL"):
        ServedTeacher("127.0.0.1:1", TOP_K)


def test_a_server_that_does_not_answer_is_one_line_after_the_retries():
    from divreg.serving import ServerClient
    from divreg.serving._server import free_port

    client = ServerClient(f"http://127.0.0.1:{free_port()}", timeout=2, retries=2, backoff=0.01)
    with pytest.raises(ServerError, match=r"does not answer /v1/models \(ConnectionError\); is it running\? \(divreg serve MODEL starts one\)"):
        client.model_name()


def _cache_rows(folder, example_ids, positions):
    return TeacherCache(str(folder)).lookup(example_ids, positions)


COMMON = ["seq_len=24", "prompt_len=6"]


@pytest.fixture
def text_data(tmp_path):
    """80 texts of the built-in corpus as a JSONL file (the caches and runs stay seconds long)."""
    import json

    from divreg.data import builtin_corpus

    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": text[:400]}) + "\n" for text in builtin_corpus()[0][:80]))
    return f"data={path}"


def _assert_same_top_k(ids, logprobs, other_ids, other_logprobs, tie: float = 2e-5):
    """The same top-k (ids and log-probs to 1e-5), up to the order of near-ties: an id may differ
    only at a rank whose log-prob is within ``tie`` of a neighbour's, or at the last rank (whose
    runner-up is not stored; its log-prob still agrees)."""
    torch.testing.assert_close(other_logprobs, logprobs, atol=1e-5, rtol=0)
    differ = ids != other_ids
    gaps = (logprobs[..., :-1] - logprobs[..., 1:]).abs()
    near = torch.zeros_like(differ)
    near[..., :-1] |= gaps < tie
    near[..., 1:] |= gaps < tie
    near[..., -1] = True
    assert bool((~differ | near).all()), "top-k ids differ at a rank that is not a near-tie"


def test_cache_teacher_from_the_server_equals_the_in_process_cache(served, tmp_path, text_data):
    from divreg.cli import main

    server, folder, _, _ = served
    assert main(["cache-teacher", f"teacher.path={folder}", "top_k=8", text_data, *COMMON,
                 f"output_dir={tmp_path / 'local'}"]) == 0
    assert main(["cache-teacher", f"teacher.server={server.url}", f"tokenizer={folder}", "top_k=8", "batch_size=5",
                 text_data, *COMMON, f"output_dir={tmp_path / 'served'}"]) == 0
    local, remote = TeacherCache(str(tmp_path / "local")), TeacherCache(str(tmp_path / "served"))
    assert local.index.keys() == remote.index.keys() and len(local.index) >= 60
    example_ids = sorted(int(key) for key in local.index)
    ids, logprobs, tail = local.lookup(example_ids, 23)
    served_ids, served_logprobs, served_tail = remote.lookup(example_ids, 23)
    _assert_same_top_k(ids, logprobs, served_ids, served_logprobs)
    torch.testing.assert_close(served_tail.exp(), tail.exp(), atol=1e-5, rtol=0)
    assert remote.manifest["teacher_server"] == server.url and remote.manifest["examples_sha256"] == \
        local.manifest["examples_sha256"]


def test_distill_lm_with_the_served_teacher_matches_the_in_process_cache(served, tmp_path, text_data):
    """The same student, data and steps: the served teacher's losses equal those of a cache the
    same model wrote in-process (forward KL on the dataset, and an on-policy method runs)."""
    import json

    from divreg.cli import main

    server, folder, _, _ = served
    assert main(["cache-teacher", f"teacher.path={folder}", "top_k=8", text_data, *COMMON,
                 f"output_dir={tmp_path / 'cache'}"]) == 0
    run = [text_data, *COMMON, f"tokenizer={folder}", "steps=6", "eval_every=3", "batch_size=8", "eval_examples=8",
           "student.config.hidden_size=16", "student.config.intermediate_size=32", "kl_eval=false", "methods=[forward_kl]"]
    assert main(["distill-lm", *run, f"teacher_cache={tmp_path / 'cache'}", f"output_dir={tmp_path / 'cached'}"]) == 0
    assert main(["distill-lm", *run, f"teacher.server={server.url}", "teacher.top_k=8",
                 f"output_dir={tmp_path / 'served'}"]) == 0
    records = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("cached", "served")}
    assert [r["step"] for r in records["served"]] == [r["step"] for r in records["cached"]] == [3, 6]
    for mine, theirs in zip(records["served"], records["cached"]):
        for key in ("loss", "divergence", "perplexity"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key
    # on generated text: the student's samples scored by the server
    assert main(["distill-lm", *run[:-1], "methods=[{name: on_policy, divergence: reverse_kl, lmbda: 1.0}]",
                 "max_new_tokens=6", f"teacher.server={server.url}", "teacher.top_k=8",
                 f"output_dir={tmp_path / 'on_policy'}"]) == 0


def test_distill_lm_refuses_what_a_served_teacher_cannot_do(tmp_path):
    from divreg.config import load_config
    from divreg.recipes.lm_distillation import DistillLMConfig

    base = ["teacher.server=http://127.0.0.1:1", f"output_dir={tmp_path}"]
    for extra, message in ((["kl_eval=true"], "pass teacher.path=<the folder it serves> as well, or kl_eval=false"),
                           (["kl_eval=false", "temperature=2.0"], "the server's log-probs are at temperature 1"),
                           (["kl_eval=false", "teacher_cache=x", "methods=[forward_kl]"], "teacher.server and teacher_cache are two teachers"),
                           (["kl_eval=false", "methods=[{name: s, divergence: forward_kl, sequence_kd: true}]"],
                            "sequence_kd trains on the teacher's own generations")):
        with pytest.raises(ValueError, match=message):
            load_config(DistillLMConfig, None, [*base, *extra])
