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

pytestmark = [pytest.mark.slow, pytest.mark.server]

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
        assert torch.equal(signal.ids, ids)
        torch.testing.assert_close(signal.logprobs.double(), logprobs, atol=1e-5, rtol=0)
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
    assert torch.equal(served_signal.ids, cached.ids)
    torch.testing.assert_close(served_signal.logprobs, cached.logprobs, atol=1e-5, rtol=0)
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
