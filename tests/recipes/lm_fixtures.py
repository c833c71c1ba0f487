"""Tiny tokenizers, models and examples for the LM tests (built in code, nothing downloaded)."""

from __future__ import annotations

import functools

import torch

from divreg.data import builtin_corpus, chunk_texts, train_bpe_tokenizer
from divreg.models import CausalLM, ModelSource, build_causal_lm

TINY_LLAMA = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 128,
              "tie_word_embeddings": False}


@functools.lru_cache(maxsize=None)
def tokenizer(vocab_size: int = 300):
    return train_bpe_tokenizer(builtin_corpus()[0][:20], vocab_size)


def examples(count: int = 24, seq_len: int = 24, prompt_len: int = 6, vocab_size: int = 300):
    return chunk_texts(builtin_corpus()[0][:20], tokenizer(vocab_size), seq_len, prompt_len)[:count]


def model(seed: int, vocab_size: int = 300, **overrides) -> CausalLM:
    config = {**TINY_LLAMA, **overrides}
    return CausalLM(build_causal_lm(ModelSource(config=config), tokenizer(vocab_size), seed))


def tiny_config_overrides(output_dir, **extra) -> list[str]:
    """Command-line overrides for a seconds-long distill-lm run."""
    base = {"output_dir": output_dir, "vocab_size": 300, "teacher_train_steps": 20, "steps": 8, "eval_every": 4,
            "eval_examples": 8, "batch_size": 8, "seq_len": 24, "prompt_len": 6, "max_new_tokens": 8,
            "checkpoint_every": 2, "teacher.config.hidden_size": 16, "teacher.config.intermediate_size": 32,
            "teacher.config.num_hidden_layers": 1, "student.config.hidden_size": 8,
            "student.config.intermediate_size": 16, **extra}
    return [f"{key}={value}" for key, value in base.items()]


def grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


GRPO_MODES = tuple(f"grpo_{agg}" for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                              "seq_mean_token_sum_norm"))
# the objectives whose gradients must not depend on the split
MODES = ("jsd", "uld_token", "uld_sequence", *GRPO_MODES)


def micro_loss(mode: str):
    """``loss_fn(model, micro_batch, counts)`` of the recipe for ``mode``: JSD to a same-tokenizer
    teacher (plain LMDistillLoss), or ULD to a teacher with another tokenizer (per token or per
    sequence), as the LM recipe builds them."""
    from divreg.losses import LMDistillLoss
    from divreg.models import next_token_signal
    from divreg.recipes.lm_distillation.objectives import uld_loss_fn
    from divreg.recipes.lm_distillation.teachers import CrossTokenizerTeacher
    from divreg.targets import LiveTeacher

    if mode.startswith("grpo_"):  # the GRPO loss with a k3 KL to a reference, per-example advantages
        from divreg.losses import GRPOLoss

        reference = model(seed=2).eval()
        grpo = GRPOLoss(loss_agg=mode.removeprefix("grpo_"), max_completion_length=24, epsilon_high=0.28)

        def token_logprobs(policy, batch):
            labels = batch["labels"][:, 1:]
            log_probs = torch.log_softmax(policy(batch["input_ids"], batch["attention_mask"])[:, :-1], -1)
            return log_probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1), labels != -100

        def grpo_loss(student, batch, counts):
            logprobs, mask = token_logprobs(student, batch)
            with torch.no_grad():
                ref_logprobs, _ = token_logprobs(reference, batch)
            advantages = torch.sin(batch["example_ids"].double() + 0.5)  # a function of the example, not its place
            old = logprobs.detach() - 0.1 * torch.cos(torch.arange(logprobs.shape[1], dtype=logprobs.dtype))
            out = grpo(logprobs, old, advantages, mask, tokens=counts.tokens, sequences=counts.sequences,
                       ref_logprobs=ref_logprobs, kl_coef=0.05)
            return out.loss, {"loss": out.loss.detach()}

        return grpo_loss
    if mode == "jsd":
        teacher = LiveTeacher(model(seed=2).eval())
        loss_fn = LMDistillLoss("generalized_jsd", beta=0.3, temperature=2.0, ce_weight=0.5)

        def jsd(student, batch, counts):
            out = loss_fn(next_token_signal(student, batch), teacher.signal(batch), batch["labels"][:, 1:],
                          counts.tokens)
            return out.loss, {"loss": out.loss}

        return jsd
    cross = CrossTokenizerTeacher(model(seed=3, vocab_size=280).eval(), tokenizer(300), tokenizer(280), 1.0,
                                  per_sequence=mode == "uld_sequence")
    return uld_loss_fn(cross, weight=1.5, ce_weight=1.0)


def accumulated_grads(mode: str, examples_of_process, micro_batches: int, accelerator) -> dict[str, torch.Tensor]:
    """Gradients of one student after backward over ``micro_batches`` micro-batches of this
    process's examples, through the recipe's accumulation (global counts, one sync)."""
    from divreg.data import collate
    from divreg.training import backward_micro_batches

    student = accelerator.prepare(model(seed=1))
    micro = [collate(examples_of_process[i::micro_batches], tokenizer().pad_token_id, length=24)
             for i in range(micro_batches)]
    backward_micro_batches(accelerator, student, micro, micro_loss(mode))
    return grads(accelerator.unwrap_model(student))


# the preference recipe's micro-batch loss: precomputed reference log-probs with an SFT term and a
# second loss; or the reference live with HyPO's surrogate on samples (2 per pair)
PREFERENCE_MODES = ("preference_precomputed", "preference_live_hypo")


def preference_pairs():
    """8 pairs: chosen = an example, rejected = the same prompt with its completion reversed and
    cut to 5 tokens; 16 'samples' (2 per pair, pair-major) with fixed reference sequence log-probs."""
    from divreg.data import PreferencePair, TextExample

    every = examples(24)
    pairs = [PreferencePair(e.example_id, e, TextExample.with_prompt(
        e.example_id, e.input_ids[:e.prompt_length] + e.input_ids[e.prompt_length:][::-1][:5], e.prompt_length))
        for e in every[:8]]
    extra = every[8:]
    coefficients = torch.sin(torch.arange(16, dtype=torch.float64) + 0.3)
    return pairs, extra, coefficients


def preference_grads(mode: str, rank: int, processes: int, micro_batches: int, accelerator) -> dict[str, torch.Tensor]:
    """Gradients of one student after this process's share of the 8 pairs (rank::processes), in
    ``micro_batches`` micro-batches, through the recipe's own micro-batches, counts and loss."""
    from divreg.losses import PreferenceLoss
    import functools

    from divreg.models import next_token_signal
    from divreg.recipes.preference.trainer import (pair_counts, pair_loss_fn, pair_micro_batches,
                                                   sequence_logprobs)
    from divreg.training import backward_micro_batches

    dense = functools.partial(next_token_signal, hidden=False)

    pairs, samples, coefficients = preference_pairs()
    reference = model(seed=2).eval()
    student = accelerator.prepare(model(seed=1))
    indices = list(range(8))[rank::processes]
    local = [pairs[i] for i in indices]
    pad = tokenizer().pad_token_id
    if mode == "preference_precomputed":
        table = torch.stack([sequence_logprobs(reference, [p.chosen for p in pairs], pad, dense),
                             sequence_logprobs(reference, [p.rejected for p in pairs], pad, dense)], 1)
        loss = PreferenceLoss({"sigmoid": 1.0, "ipo": 0.3}, beta=0.2, sft_weight=0.5)
        local_samples, local_coefficients, hypo = [], torch.zeros(0, dtype=torch.float64), 0.0
    else:
        table, loss, hypo = None, PreferenceLoss("sigmoid", beta=0.2), 0.7
        local_samples = [samples[2 * i + j] for i in indices for j in range(2)]
        local_coefficients = torch.stack([coefficients[2 * i + j] for i in indices for j in range(2)])
    micro = pair_micro_batches(local, indices, local_samples, local_coefficients, table, micro_batches, pad,
                               2 if local_samples else 0)
    counts = pair_counts(accelerator, local, len(local_samples))
    backward_micro_batches(accelerator, student, micro, pair_loss_fn(loss, reference, dense, hypo, 2), counts=counts)
    return grads(accelerator.unwrap_model(student))
