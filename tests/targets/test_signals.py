"""Signals and where they come from: a live teacher, a frozen reference policy, a cache."""

import pytest
import torch

from divreg.targets import (DenseLogits, HiddenStates, LiveTeacher, ReferencePolicy, SampledLogprobs, SparseTopK,
                            TeacherCacheWriter, TeacherCache, as_logits, detached)

from ..recipes import lm_fixtures as fx


def test_hidden_states_carry_the_bias_into_the_logits():
    generator = torch.Generator().manual_seed(0)
    hidden, weight, bias = (torch.randn(shape, generator=generator, dtype=torch.float64)
                            for shape in ((2, 3, 4), (7, 4), (7,)))
    expected = torch.einsum("bth,vh->btv", hidden, weight) + bias
    assert torch.allclose(HiddenStates(hidden, weight, bias).to_logits(), expected, rtol=0, atol=1e-12)
    assert torch.allclose(as_logits(HiddenStates(hidden, weight)), expected - bias, rtol=0, atol=1e-12)
    assert as_logits(DenseLogits(expected)) is expected
    with pytest.raises(ValueError, match="no full logits"):
        as_logits(SparseTopK(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1)))


def test_detached_signal_has_no_graph():
    hidden = torch.randn(2, 4, requires_grad=True)
    signal = detached(HiddenStates(hidden, torch.randn(5, 4, requires_grad=True)))
    assert not signal.hidden.requires_grad and not signal.weight.requires_grad and signal.bias is None


def test_live_teacher_of_a_classifier_gives_its_logits_without_graph():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    signal = LiveTeacher(model).signal(x)
    assert isinstance(signal, DenseLogits) and not signal.logits.requires_grad
    assert torch.equal(signal.logits, model(x).detach())
    with pytest.raises(ValueError, match="hidden states need a model wrapper"):
        LiveTeacher(model, hidden=True).signal(x)


def _batch(count=4):
    from divreg.data import collate

    return collate(fx.examples(count), fx.tokenizer().pad_token_id, length=24)


def test_live_teacher_of_a_causal_lm_gives_next_token_logits_or_hidden_states():
    teacher, batch = fx.model(seed=2).eval(), _batch()
    dense = LiveTeacher(teacher).signal(batch)
    full = teacher(batch["input_ids"], batch["attention_mask"])  # (B, T, V)
    assert torch.equal(dense.logits, full[:, :-1])  # position t predicts token t + 1
    states = LiveTeacher(teacher, hidden=True).signal(batch)
    assert isinstance(states, HiddenStates) and states.hidden.shape[:2] == dense.logits.shape[:2]
    torch.testing.assert_close(states.to_logits(), dense.logits, rtol=1e-5, atol=1e-5)


def test_reference_policy_scores_the_batch_tokens():
    policy, batch = fx.model(seed=3).eval(), _batch()
    signal = ReferencePolicy(policy).signal(batch)
    assert isinstance(signal, SampledLogprobs) and signal.logprobs.shape == (4, 23)
    with torch.no_grad():
        log_probs = torch.log_softmax(policy(batch["input_ids"], batch["attention_mask"]).double(), -1)  # (B, T, V)
    expected = torch.stack([torch.stack([log_probs[b, t, batch["input_ids"][b, t + 1]] for t in range(23)])
                            for b in range(4)])  # a plain loop, independent of the gather
    torch.testing.assert_close(signal.logprobs.double(), expected, rtol=0, atol=1e-5)
    assert bool((signal.logprobs <= 0).all())


def test_cache_signal_is_its_lookup(tmp_path):
    teacher, examples = fx.model(seed=2).eval(), fx.examples(4)
    batch = _batch()
    writer = TeacherCacheWriter(str(tmp_path), 5, 1.0)
    with torch.no_grad():
        logits = teacher(batch["input_ids"], batch["attention_mask"])[:, :-1]
    for row, example in enumerate(examples):
        writer.add(example.example_id, logits[row, : len(example.input_ids) - 1])
    writer.close()
    cache = TeacherCache(str(tmp_path))
    signal = cache.signal(batch)
    ids, logprobs, tail = cache.lookup(batch["example_ids"].tolist(), 23)
    assert torch.equal(signal.ids, ids) and torch.equal(signal.logprobs, logprobs)
    assert torch.equal(signal.tail_logmass, tail)
