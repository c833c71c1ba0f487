"""The causal-LM wrapper on real (tiny) transformers models: the fused path's assumption
(logits = hidden @ W.T), the vocabulary slice of a padded embedding, and sampling."""

import pytest
import torch

from divreg.data import IGNORE_INDEX, collate
from divreg.models import CausalLM, ModelSource, build_causal_lm, generate_examples, greedy_completions

from ..recipes import lm_fixtures as fx


def _batch(count=8):
    return collate(fx.examples(count), fx.tokenizer().pad_token_id, length=24)


def test_fused_assumption_holds_for_the_model():
    student = fx.model(seed=0)
    batch = _batch(4)
    hidden = student(batch["input_ids"], batch["attention_mask"], hidden=True)
    logits = student(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(hidden @ student.output_weight.T, logits, rtol=1e-5, atol=1e-5)


def test_wrapper_keeps_only_the_tokenizer_rows_of_a_padded_embedding():
    """A model whose output layer has 16 rows past its tokenizer: logits and output weight
    cover the tokenizer's tokens only (the padded model's first rows), generations never sample a
    padded row even when those rows are the likeliest, and fewer rows than tokens is refused."""
    tok = fx.tokenizer()
    raw = build_causal_lm(ModelSource(config={**fx.TINY_LLAMA, "vocab_size": len(tok) + 16}), tok, 3)
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


def test_sampling_temperature_and_top_p_reach_the_sampler():
    """A near-zero sampling temperature (or a tiny nucleus) samples the greedy continuation; the
    default temperature 1 does not (on this untrained model)."""
    student = fx.model(seed=1)
    prompts = [e.input_ids[: e.prompt_length] for e in fx.examples(4)]
    tokenizer = fx.tokenizer()
    with torch.no_grad():
        greedy = student.model.generate(input_ids=torch.tensor(prompts), attention_mask=torch.ones(4, 6, dtype=torch.long),
                                        do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id)
    expected = [row[6:].tolist() for row in greedy]
    for options in ({"temperature": 1e-4}, {"top_p": 1e-6}):
        cold = generate_examples(student, prompts, tokenizer, max_new_tokens=6, seed=3, **options)
        for example, tokens in zip(cold, expected):
            completion = example.input_ids[6:]
            assert completion == tokens[: len(completion)]
    warm = generate_examples(student, prompts, tokenizer, max_new_tokens=6, seed=3)
    assert [e.input_ids[6:] for e in warm] != [t[: len(e.input_ids) - 6] for e, t in zip(warm, expected)]
    with pytest.raises(ValueError, match="temperature > 0"):
        generate_examples(student, prompts, tokenizer, max_new_tokens=6, seed=3, temperature=0.0)


def test_the_models_own_generation_defaults_do_not_change_the_samples():
    """A hub model ships a ``generation_config`` (repetition penalty, n-gram bans, minimum
    length, min-p ...) that ``generate`` merges into every call unless told otherwise: sampled and
    greedy completions stay those of the plain distribution, and the model keeps its config."""
    from transformers import GenerationConfig

    student = fx.model(seed=1)
    prompts = [e.input_ids[: e.prompt_length] for e in fx.examples(6)]
    tokenizer = fx.tokenizer()
    plain_samples = [e.input_ids for e in generate_examples(student, prompts, tokenizer, max_new_tokens=8, seed=4)]
    plain_greedy = greedy_completions(student, prompts, tokenizer, max_new_tokens=8)
    hostile = GenerationConfig(repetition_penalty=50.0, no_repeat_ngram_size=1, min_new_tokens=8, min_p=0.5,
                               top_k=2, temperature=0.3, suppress_tokens=list(range(3, 12)))
    student.model.generation_config = hostile
    with torch.no_grad():  # what a bare generate call does with it: other tokens
        merged = student.model.generate(input_ids=torch.tensor(prompts), do_sample=False, max_new_tokens=8,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    assert [tokenizer.decode(row[6:], skip_special_tokens=True) for row in merged] != plain_greedy
    assert [e.input_ids for e in generate_examples(student, prompts, tokenizer, max_new_tokens=8, seed=4)] \
        == plain_samples
    assert greedy_completions(student, prompts, tokenizer, max_new_tokens=8) == plain_greedy
    assert student.model.generation_config is hostile


def test_a_missing_local_path_is_one_clear_line(tmp_path):
    from divreg.models import load_tokenizer

    for loader, what in ((lambda p: load_tokenizer(p), "tokenizer"),
                         (lambda p: build_causal_lm(ModelSource(path=p), fx.tokenizer(), 0), "model")):
        with pytest.raises(ValueError, match=rf"{what} '.*missing_folder': no such folder") as info:
            loader(str(tmp_path / "missing_folder"))
        assert info.value.__cause__ is None and "\n" not in str(info.value)


def test_weights_fingerprint_names_the_weights_not_the_folder(tmp_path):
    """The same weights saved and loaded from another folder have the same fingerprint; one
    changed value (also in a 0-dim buffer) changes it; bfloat16 and float32 copies differ."""
    from divreg.models import weights_fingerprint

    model = fx.model(seed=0)
    model.model.save_pretrained(tmp_path / "a")
    loaded = build_causal_lm(ModelSource(path=str(tmp_path / "a")), fx.tokenizer(), seed=1)
    assert weights_fingerprint(loaded) == weights_fingerprint(model.model)
    with torch.no_grad():
        next(loaded.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(loaded) != weights_fingerprint(model.model)
    scalar = torch.nn.Linear(2, 2)
    scalar.register_buffer("scale", torch.tensor(3.0))
    before = weights_fingerprint(scalar)
    scalar.scale.fill_(4.0)
    assert weights_fingerprint(scalar) != before
    import copy

    linear = torch.nn.Linear(2, 2)
    assert weights_fingerprint(copy.deepcopy(linear).bfloat16()) != weights_fingerprint(linear)


@pytest.mark.parametrize("model_type,head", [("gemma2", {"final_logit_softcapping": 2.0}),
                                             ("cohere", {"logit_scale": 0.0625}),
                                             ("granite", {"logits_scaling": 8.0}),
                                             ("llama", {})])
def test_the_hidden_state_signal_carries_the_models_output_head(model_type, head):
    """Gemma's softcapping, Cohere's logit scale, Granite's scaling: the fused path computes the
    model's own logits and log-probs (float64), not hidden @ W^T."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from divreg.models import next_token_signal
    from divreg.targets import sampled_token_logprobs

    tokenizer = fx.tokenizer()
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                  pad_token_id=tokenizer.pad_token_id, **head)
    torch.manual_seed(0)
    model = CausalLM(AutoModelForCausalLM.from_config(config).double().eval(), len(tokenizer))
    batch = {"input_ids": torch.randint(0, len(tokenizer), (2, 7), generator=torch.Generator().manual_seed(1))}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        dense, hidden = next_token_signal(model, batch), next_token_signal(model, batch, hidden=True)
        assert torch.allclose(hidden.to_logits(), dense.logits, rtol=1e-10, atol=1e-10)
        tokens = batch["input_ids"][:, 1:]
        fused = sampled_token_logprobs(hidden, tokens, temperature=0.7)
        plain = sampled_token_logprobs(dense, tokens, temperature=0.7)
        assert torch.allclose(fused.logprobs, plain.logprobs, atol=1e-10)
        assert torch.allclose(fused.entropy, plain.entropy, atol=1e-10)
    assert (hidden.logit_scale, hidden.softcap) == {"gemma2": (None, 2.0), "cohere": (0.0625, None),
                                                    "granite": (0.125, None), "llama": (None, None)}[model_type]
