"""LM distillation pieces on real (tiny) transformers models: the fused path equals the plain
one, gradients do not depend on how the global batch is split (1x8, 4x2, 2 processes x 4),
the teacher cache returns the right rows, and the vocabulary policy."""

import os
import subprocess

import pytest
import torch

from divreg.data._text import IGNORE_INDEX, collate

from ..launch import accelerate_prefix
from divreg.losses import LMDistillLoss
from divreg.recipes._lm_config import ModelSource
from divreg.recipes._lm_models import CausalLM, build_model
from divreg.recipes._lm_sources import AdaptiveOffPolicy, generate_examples
from divreg.recipes._lm_teacher import TeacherSignal, student_arguments
from divreg.targets import TeacherCache, TeacherCacheWriter, shared_vocab_size

from . import lm_fixtures as fx


def _batch(count=8):
    return collate(fx.examples(count), fx.tokenizer().pad_token_id, length=24)


def test_fused_assumption_holds_for_the_model():
    student = fx.model(seed=0)
    batch = _batch(4)
    hidden = student(batch["input_ids"], batch["attention_mask"], hidden=True)
    logits = student(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(hidden @ student.output_weight.T, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("divergence,options", [("forward_kl", {}), ("generalized_jsd", {"beta": 0.3}),
                                                ("reverse_kl", {})])
def test_fused_path_equals_plain_path_on_a_real_model(divergence, options):
    batch = _batch(6)
    teacher = fx.model(seed=2).eval()
    results = []
    for fused in (False, True):
        student = fx.model(seed=1)
        loss_fn = LMDistillLoss(divergence, temperature=2.0, t_squared=True, ce_weight=0.4, fused=fused, chunk_size=7,
                                **options)
        out = loss_fn(labels=batch["labels"][:, 1:], num_items_in_batch=37,
                      **student_arguments(student, batch, fused),
                      **TeacherSignal(teacher, None, fused).arguments(batch))
        out.loss.backward()
        results.append((out, fx.grads(student)))
    (plain, plain_grads), (fused_out, fused_grads) = results
    for field in ("loss", "divergence", "cross_entropy"):
        torch.testing.assert_close(getattr(fused_out, field), getattr(plain, field), rtol=2e-5, atol=1e-6)
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)


def _write_cache(directory, teacher, examples, top_k=5):
    writer = TeacherCacheWriter(str(directory), top_k, 1.0, rows_per_shard=50)  # several shards
    batch = collate(examples, fx.tokenizer().pad_token_id, length=24)
    with torch.no_grad():
        logits = teacher(batch["input_ids"], batch["attention_mask"])[:, :-1]
    for row, example in enumerate(examples):
        writer.add(example.example_id, logits[row, : len(example.input_ids) - 1])
    writer.close()
    return TeacherCache(str(directory))


def test_cache_rows_follow_example_ids_under_shuffling(tmp_path):
    teacher = fx.model(seed=2).eval()
    examples = fx.examples(12)
    cache = _write_cache(tmp_path, teacher, examples)
    assert cache.manifest["shards"] > 1
    shuffled = [examples[i] for i in torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()]
    for micro in (shuffled[:5], shuffled[5:7], shuffled[7:]):  # accumulation-sized pieces, any order
        batch = collate(micro, fx.tokenizer().pad_token_id, length=24)
        ids, logprobs, tail = cache.lookup(batch["example_ids"].tolist(), 23)
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(batch["input_ids"], batch["attention_mask"])[:, :-1], -1)
        top = log_p.topk(5, -1)
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        assert torch.equal(ids[mask], top.indices[mask])
        torch.testing.assert_close(logprobs[mask], top.values[mask], rtol=0, atol=1e-6)
        expected_tail = torch.logsumexp(log_p.scatter(-1, top.indices, -torch.inf), -1)
        torch.testing.assert_close(tail[mask], expected_tail[mask], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not in the teacher cache"):
        cache.lookup([999], 23)


def test_cached_signal_trains_like_the_live_teacher_topk(tmp_path):
    """The cached top-k (sparse, bucket tail) gives the same loss and gradient as top-k KL on
    the live teacher's logits, on the plain and the fused path."""
    teacher = fx.model(seed=2).eval()
    examples = fx.examples(6)
    cache = _write_cache(tmp_path, teacher, examples)
    batch = collate(examples, fx.tokenizer().pad_token_id, length=24)
    outputs = []
    for source, fused in (("live", False), ("cache", False), ("cache", True)):
        student = fx.model(seed=1)
        if source == "live":
            loss_fn = LMDistillLoss("topk_kl", k=5, fused=fused)
            teacher_args = TeacherSignal(teacher, None, False).arguments(batch)
        else:
            loss_fn = LMDistillLoss(fused=fused)
            teacher_args = TeacherSignal(None, cache, fused).arguments(batch)
        out = loss_fn(labels=batch["labels"][:, 1:], num_items_in_batch=40,
                      **student_arguments(student, batch, fused), **teacher_args)
        out.loss.backward()
        outputs.append((out.loss, fx.grads(student)))
    for loss, grads in outputs[1:]:
        torch.testing.assert_close(loss, outputs[0][0], rtol=1e-5, atol=1e-6)
        for name in grads:
            torch.testing.assert_close(grads[name], outputs[0][1][name], rtol=1e-4, atol=1e-6)


def _accumulated_grads(micro_batches: int):
    student, teacher = fx.model(seed=1), fx.model(seed=2).eval()
    loss_fn = LMDistillLoss("generalized_jsd", beta=0.3, temperature=2.0, ce_weight=0.5)
    examples = fx.examples(8)
    micro = [collate(examples[i::micro_batches], fx.tokenizer().pad_token_id, length=24) for i in range(micro_batches)]
    num_items = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
    for batch in micro:
        loss_fn(labels=batch["labels"][:, 1:], num_items_in_batch=num_items,
                **student_arguments(student, batch, False),
                **TeacherSignal(teacher, None, False).arguments(batch)).loss.backward()
    return fx.grads(student)


def test_same_gradients_for_1x8_4x2_and_2_processes_x_4(tmp_path):
    one = _accumulated_grads(1)
    four = _accumulated_grads(4)
    for name in one:
        torch.testing.assert_close(four[name], one[name], rtol=1e-5, atol=1e-8)
    cache_dir = tmp_path / "cache"
    _write_cache(cache_dir, fx.model(seed=2).eval(), fx.examples(8))
    out = tmp_path / "grads.pt"
    worker = os.path.join(os.path.dirname(__file__), "lm_grad_worker.py")
    result = subprocess.run([*accelerate_prefix(2), worker,
                             str(out), str(cache_dir), "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=False)
    assert saved["processes"] == 2 and saved["cache_ok"] == [True, True]  # each process fetched its own rows
    for name in one:
        torch.testing.assert_close(saved["grads"][name], one[name], rtol=1e-5, atol=1e-8)


def test_vocabulary_policy():
    tok, other = fx.tokenizer(300), fx.tokenizer(280)
    assert shared_vocab_size(tok, tok, len(tok), len(tok)) == len(tok)
    assert shared_vocab_size(tok, tok, len(tok), len(tok) + 64) == len(tok)  # padded teacher embedding
    assert shared_vocab_size(tok, tok, len(tok) + 8, len(tok) + 8) == len(tok)  # both padded: still only tokens
    with pytest.raises(ValueError, match=r"differ.*vocab_policy=uld"):
        shared_vocab_size(tok, other, len(tok), len(other))
    assert shared_vocab_size(tok, other, len(tok), len(other), policy="uld") is None
    with pytest.raises(ValueError, match="fewer output rows"):
        shared_vocab_size(tok, tok, len(tok) - 1, len(tok))


def test_wrapper_keeps_only_the_tokenizer_rows_of_a_padded_embedding():
    """A model whose output layer has 16 rows past its tokenizer: logits and output weight
    cover the tokenizer's tokens only (the padded model's first rows), generations never sample a
    padded row even when those rows are the likeliest, and fewer rows than tokens is refused."""
    tok = fx.tokenizer()
    raw = build_model(ModelSource(config={**fx.TINY_LLAMA, "vocab_size": len(tok) + 16}), tok, 3)
    wrapped = CausalLM(raw, len(tok))
    batch = _batch(4)
    full = raw(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V + 16)
    logits = wrapped(batch["input_ids"], batch["attention_mask"])
    assert full.shape[-1] == len(tok) + 16 and logits.shape[-1] == len(tok)
    assert torch.equal(logits, full[..., : len(tok)])
    assert wrapped.output_weight.shape[0] == len(tok)
    hidden = wrapped(batch["input_ids"], batch["attention_mask"], hidden=True)  # (B, L, H)
    torch.testing.assert_close(hidden @ wrapped.output_weight.T, logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # padded rows along the mean hidden state: they dominate every softmax
        raw.get_output_embeddings().weight[len(tok):] = 100.0 * hidden.mean((0, 1))
    prompts = [e.input_ids[:6] for e in fx.examples(4)]
    unguarded = raw.generate(input_ids=torch.tensor(prompts), do_sample=True, max_new_tokens=6,
                             pad_token_id=tok.pad_token_id)
    assert int(unguarded[:, 6:].max()) >= len(tok)  # without the guard the padded rows are sampled
    generated = generate_examples(wrapped, prompts, tok, max_new_tokens=6, seed=1)
    assert all(max(e.input_ids) < len(tok) for e in generated)
    with pytest.raises(ValueError, match="fewer than the"):
        CausalLM(raw, len(tok) + 17)


def test_generated_examples_never_put_prompts_in_the_loss():
    student = fx.model(seed=1)
    prompts = [e.input_ids[: e.prompt_length] for e in fx.examples(4)]
    first = generate_examples(student, prompts, fx.tokenizer(), max_new_tokens=6, seed=5)
    again = generate_examples(student, prompts, fx.tokenizer(), max_new_tokens=6, seed=5)
    assert [e.input_ids for e in first] == [e.input_ids for e in again]  # reproducible from the seed
    for example, prompt in zip(first, prompts):
        assert example.input_ids[: len(prompt)] == prompt
        assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert example.labels[len(prompt):] == example.input_ids[len(prompt):] and len(example.input_ids) > len(prompt)


def test_distillm_adaptive_schedule():
    schedule = AdaptiveOffPolicy(capacity=2, init=0.0, loss_eps=0.1, total_steps=10)
    assert schedule.choose(0.01, 0) == "dataset"  # phi = 0: never student data
    schedule.observe_validation(2.0)  # reference
    schedule.observe_validation(2.05)  # not enough of an increase
    assert schedule.threshold == 0.0
    schedule.observe_validation(2.2)
    assert schedule.threshold == pytest.approx(0.1) and schedule.reference_loss == 2.2
    assert schedule.choose(0.05, 5) == "generate"  # buffer not full: generate below phi
    schedule.add(fx.examples(3)[:3])
    assert len(schedule.buffer) == 2  # capacity
    assert schedule.choose(0.04, 5) == "generate"  # below phi * (1 - t/T) = 0.05
    assert schedule.choose(0.07, 5) == "replay"  # between phi * (1 - t/T) and phi
    assert schedule.choose(0.5, 5) == "dataset"
    restored = AdaptiveOffPolicy(capacity=2, init=0.0, loss_eps=0.1, total_steps=10)
    restored.load_state_dict(schedule.state_dict())
    assert restored.threshold == schedule.threshold and [e.input_ids for e in restored.buffer] == [
        e.input_ids for e in schedule.buffer]
