"""LM distillation pieces on real (tiny) transformers models: the fused path equals the plain
one, gradients do not depend on how the global batch is split (1x8, 4x2, 2 processes x 4), a
cached teacher trains like the live one's top-k, and DistiLLM's adaptive source."""

import os
import subprocess

import pytest
import torch
from accelerate import Accelerator

from divreg.data import collate
from divreg.losses import LMDistillLoss
from divreg.models import next_token_signal
from divreg.recipes.lm_distillation.sources import AdaptiveOffPolicy
from divreg.targets import LiveTeacher, TeacherCache, TeacherCacheWriter

from ..launch import accelerate_prefix

from . import lm_fixtures as fx

pytestmark = pytest.mark.slow  # whole jobs end to end (make test-fast leaves them out)


def _batch(count=8):
    return collate(fx.examples(count), fx.tokenizer().pad_token_id, length=24)


@pytest.mark.parametrize("divergence,options", [("forward_kl", {}), ("generalized_jsd", {"beta": 0.3}),
                                                ("reverse_kl", {})])
def test_fused_path_equals_plain_path_on_a_real_model(divergence, options):
    batch = _batch(6)
    teacher = fx.model(seed=2).eval()
    results = []
    for fused in (False, True):
        student = fx.model(seed=1)
        loss_fn = LMDistillLoss(divergence, temperature=2.0, t_squared=True, ce_weight=0.4, chunk_size=7, **options)
        out = loss_fn(next_token_signal(student, batch, hidden=fused), LiveTeacher(teacher, hidden=fused).signal(batch),
                      batch["labels"][:, 1:], num_items_in_batch=37)
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
            loss_fn = LMDistillLoss("topk_kl", k=5)
            target = LiveTeacher(teacher).signal(batch)
        else:
            loss_fn = LMDistillLoss()
            target = cache.signal(batch)
        out = loss_fn(next_token_signal(student, batch, hidden=fused), target, batch["labels"][:, 1:],
                      num_items_in_batch=40)
        out.loss.backward()
        outputs.append((out.loss, fx.grads(student)))
    for loss, grads in outputs[1:]:
        torch.testing.assert_close(loss, outputs[0][0], rtol=1e-5, atol=1e-6)
        for name in grads:
            torch.testing.assert_close(grads[name], outputs[0][1][name], rtol=1e-4, atol=1e-6)


def _atol(mode, gradient):
    """1e-8, or for the GRPO and preference modes (whose per-sequence sums make gradients up to
    20x larger, so that fp32 summation order alone moves small entries by ~1e-7) 1e-6 of the
    gradient's largest entry: about 8 float32 roundings of the largest term."""
    return 1e-6 * float(gradient.abs().max()) if mode.startswith(("grpo_", "preference_")) else 1e-8


@pytest.mark.alone  # two processes or a Ray cluster: make test runs it after the parallel tier
def test_same_gradients_for_1x8_4x2_and_2_processes_x_4(tmp_path):
    """Every objective (JSD; ULD per token and per sequence, each with its CE; GRPO with each
    aggregation; the preference recipe's loss with precomputed reference log-probs, a second loss
    and SFT, and with a live reference and HyPO's surrogate) gives the same gradient for one batch
    of 8, 4 micro-batches of 2, and 2 processes x 4 (DDP)."""
    examples = fx.examples(8)
    one = {mode: fx.accumulated_grads(mode, examples, 1, Accelerator(cpu=True)) for mode in fx.MODES}
    one |= {mode: fx.preference_grads(mode, 0, 1, 1, Accelerator(cpu=True)) for mode in fx.PREFERENCE_MODES}
    for mode in (*fx.MODES, *fx.PREFERENCE_MODES):
        four = (fx.preference_grads(mode, 0, 1, 4, Accelerator(cpu=True)) if mode in fx.PREFERENCE_MODES
                else fx.accumulated_grads(mode, examples, 4, Accelerator(cpu=True)))
        for name in one[mode]:
            torch.testing.assert_close(four[name], one[mode][name], rtol=1e-5, atol=_atol(mode, one[mode][name]),
                                       msg=f"{mode} {name}")
    cache_dir = tmp_path / "cache"
    _write_cache(cache_dir, fx.model(seed=2).eval(), fx.examples(8))
    out = tmp_path / "grads.pt"
    worker = os.path.join(os.path.dirname(__file__), "lm_grad_worker.py")
    result = subprocess.run([*accelerate_prefix(2), worker,
                             str(out), str(cache_dir), "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=False)
    assert saved["processes"] == 2 and saved["cache_ok"] == [True, True]  # each process fetched its own rows
    for mode in (*fx.MODES, *fx.PREFERENCE_MODES):
        for name in one[mode]:
            torch.testing.assert_close(saved["grads"][mode][name], one[mode][name], rtol=1e-5,
                                       atol=_atol(mode, one[mode][name]), msg=f"{mode} {name}")


def test_distillm_adaptive_schedule():
    schedule = AdaptiveOffPolicy(capacity=2, init=0.0, loss_eps=0.1, total_steps=10)
    assert schedule.choose(0.01, 0) == "dataset"  # phi = 0: never student data
    schedule.observe({"nll": 2.0})  # reference
    schedule.observe({"nll": 2.05})  # not enough of an increase
    assert schedule.threshold == 0.0
    schedule.observe({"nll": 2.2})
    assert schedule.threshold == pytest.approx(0.1) and schedule.probability.reference_loss == 2.2
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


def _bos_tokenizer():
    """A tokenizer that puts BOS before every text it encodes (as Llama's and Mistral's do)."""
    from tokenizers.processors import TemplateProcessing

    from divreg.data import builtin_corpus, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(builtin_corpus()[0][:20], 280)
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<bos> $A",
                                                             special_tokens=[("<bos>", tokenizer.bos_token_id)])
    assert tokenizer("def f")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


def test_uld_retokenization_puts_bos_only_before_the_prompt():
    """A teacher tokenizer that adds BOS: the teacher reads [BOS] prompt answer (the official
    code's add_special_tokens=False plus one leading BOS), never a BOS between prompt and answer,
    so its first answer position predicts the first answer token."""
    from divreg.recipes.lm_distillation.teachers import CrossTokenizerTeacher

    teacher_tokenizer = _bos_tokenizer()
    cross = CrossTokenizerTeacher(None, fx.tokenizer(), teacher_tokenizer, 1.0)
    batch = collate(fx.examples(3), fx.tokenizer().pad_token_id, length=24)
    input_ids, attention, answer_mask = cross._retokenize(batch)
    bos = teacher_tokenizer.bos_token_id
    for row in range(3):
        ids = input_ids[row][attention[row].bool()].tolist()
        assert ids[0] == bos and bos not in ids[1:]
        labels = batch["labels"][row].tolist()
        prompt_length = next(i for i, label in enumerate(labels) if label != -100)
        prompt_text = fx.tokenizer().decode(batch["input_ids"][row, :prompt_length])
        answer_text = fx.tokenizer().decode([t for t, label in zip(batch["input_ids"][row].tolist(), labels)
                                             if label != -100])
        prompt_ids = teacher_tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        answer_ids = teacher_tokenizer(answer_text, add_special_tokens=False)["input_ids"]
        assert ids == [bos] + prompt_ids + answer_ids
        first_answer_position = int(answer_mask[row].nonzero()[0])  # it predicts the token after it
        assert ids[first_answer_position + 1] == answer_ids[0]


def test_records_never_put_bos_inside_the_sequence():
    from divreg.data import tokenize_records

    tokenizer = _bos_tokenizer()
    example = tokenize_records([{"prompt": "def f(x):", "completion": " return x"}], tokenizer, 64, 3)[0]
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.bos_token_id not in example.input_ids[1:]


def test_uld_objective_weighs_the_distance_by_the_method_weight():
    """``ce_weight * CE + weight * ULD`` with the official distil_factor 1.5 as the weight."""
    from divreg.training import ItemCounts

    batch = collate(fx.examples(4), fx.tokenizer().pad_token_id, length=24)
    counts = ItemCounts(torch.tensor(float((batch["labels"][:, 1:] != -100).sum())), torch.tensor(4.0))
    loss, parts = fx.micro_loss("uld_sequence")(fx.model(seed=1), batch, counts)
    assert float(parts["divergence"]) > 0 and float(parts["ce"]) > 0
    torch.testing.assert_close(loss, parts["ce"] + 1.5 * parts["divergence"], rtol=1e-6, atol=0)


def test_on_policy_generations_use_the_sampling_temperature_not_the_loss_temperature():
    """TRL's GKD samples at 0.9 and computes its loss at T = 1; divreg separates the two: the
    config's sampling_temperature reaches the student's generations (near 0: greedy)."""
    from divreg.config import load_config
    from divreg.recipes.lm_distillation import DistillLMConfig
    from divreg.recipes.lm_distillation.sources import StepSource

    train, student = fx.examples(16), fx.model(seed=1)
    config = load_config(DistillLMConfig, None, ["batch_size=4", "max_new_tokens=5", "sampling_temperature=0.0001",
                                                 "temperature=3.0", "methods=[{name: gkd, lmbda: 1.0}]"])
    examples, source = StepSource(config, config.methods[0], train, fx.tokenizer()).examples(0, student, 0, 1)
    assert source == "generate"
    for example in examples:
        prompt = example.input_ids[: example.prompt_length]
        with torch.no_grad():
            greedy = student.model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=5,
                                            pad_token_id=fx.tokenizer().pad_token_id,
                                            eos_token_id=fx.tokenizer().eos_token_id)[0, len(prompt):].tolist()
        completion = example.input_ids[len(prompt):]
        assert completion == greedy[: len(completion)]
