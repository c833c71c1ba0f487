"""Preference optimization of one seed on the shared run loop: the supervised warm-up (CE on
the chosen answers), the pairs (built-in: a wrong completion of the warm-up model as the
rejected answer), the reference's log-probs (precomputed once), then each method (DPO; HyPO =
DPO + lambda x the online KL surrogate on fresh samples) from the warm-up weights. All randomness
is a function of (seed, step, process), so a resumed run ends with the same weights."""

from __future__ import annotations

import functools
import re
from typing import NamedTuple, Optional

import torch
from accelerate import Accelerator
from torch import Tensor

from ...data import (IGNORE_INDEX, PreferencePair, TaskProblem, TextExample, collate, examples_fingerprint,
                     tokenize_pairs)
from ...losses import PreferenceLoss, hypo_kl_surrogate
from ...models import CausalLM, exact_sequence_kl, generate_examples, next_token_signal
from ...targets import gives_hidden_states, sampled_token_logprobs
from ...training import (RunSpec, backward_micro_batches, derive_seed, global_mean, is_fsdp, load_if_exists, save_atomic,
                         step_batch, to_device, train_run)
from .._warmup import exact_match_accuracy
from .config import PreferenceConfig

_NUMBER = re.compile(r"\d+")


EXACT_KL_LIMIT = 500_000  # the exact sequence KL enumerates at most this many continuations per prompt


def exact_kl_fits(vocab_size: int, config: PreferenceConfig) -> bool:
    return (vocab_size - 1) ** (config.max_new_tokens - 1) <= EXACT_KL_LIMIT


class PairCounts(NamedTuple):
    """The global batch's counts each micro-batch loss divides by (all micro-batches, all processes)."""

    pairs: Tensor
    chosen_tokens: Tensor
    samples: Tensor


def prompt_of(pair: PreferencePair) -> list[int]:
    return pair.chosen.input_ids[:pair.chosen.prompt_length]


def completion_logprobs(signal, model, batch: dict) -> tuple[Tensor, Tensor]:
    """``(per-token log-probs (B, T-1), mask (B, T-1))`` of the labelled tokens of ``batch`` under
    ``model``, from its signal (``signal(model, batch)``: dense or hidden states)."""
    targets = batch["labels"][:, 1:]
    return sampled_token_logprobs(signal(model, batch), targets).logprobs, targets != IGNORE_INDEX


def sequence_logprobs(model, examples: list[TextExample], pad_token_id: int, signal,
                      batch_size: int = 16) -> Tensor:
    """(N,) float64 log-probs of each example's completion (its labelled tokens), no gradient, in
    batches of ``batch_size`` (16: the reference table over every pair took 1.2 GB at 256 with an
    8,000-token vocabulary, measured by benchmarks/vs_trl.py; at 16 the peak is the training step's)."""
    values = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = to_device(collate(examples[start:start + batch_size], pad_token_id), device)
            logprobs, mask = completion_logprobs(signal, model, batch)
            values.append(torch.where(mask, logprobs, 0.0).sum(1).double().cpu())
    return torch.cat(values)


def task_pairs(model: CausalLM, problems: list[TaskProblem], tokenizer, config: PreferenceConfig, seed: int,
               stream: int) -> tuple[list[PreferencePair], list[dict], int]:
    """One pair per problem: chosen = the right answer; rejected = the first of ``rejected_samples``
    completions of ``model`` (temperature 1) that is a number other than the answer, or, when none
    is, the answer plus one (a plausible wrong number). Returns the pairs, their records and how
    many rejected answers are that fallback."""
    prompts = [tokenizer(p.prompt)["input_ids"] for p in problems]
    count = config.rejected_samples
    samples = generate_examples(model, [p for p in prompts for _ in range(count)], tokenizer, config.max_new_tokens,
                                derive_seed(seed, 1_000_003, stream))
    records, fallbacks = [], 0
    for index, problem in enumerate(problems):
        wrong = None
        for example in samples[index * count:(index + 1) * count]:
            text = tokenizer.decode([t for t in example.input_ids[example.prompt_length:] if t != tokenizer.eos_token_id],
                                    skip_special_tokens=True)
            if _NUMBER.fullmatch(text) and text != problem.answer:
                wrong = text
                break
        if wrong is None:
            wrong, fallbacks = str(int(problem.answer) + 1), fallbacks + 1
        records.append({"prompt": problem.prompt, "chosen": problem.answer, "rejected": wrong})
    return tokenize_pairs(records, tokenizer, max_length=64), records, fallbacks


class PreferenceTrainer:
    def __init__(self, accelerator: Accelerator, config: PreferenceConfig, tokenizer, log_path: str):
        self.accelerator, self.config, self.tokenizer, self.log_path = accelerator, config, tokenizer, log_path
        # model, batch -> its next-token signal: hidden states on the fused path (decided once, by the vocabulary)
        self.signal = functools.partial(next_token_signal, hidden=gives_hidden_states(config.fused, len(tokenizer)))
        self.sampler = config.generation.sampler(tokenizer, config.output_dir, accelerator)  # HyPO's samples

    def served_samples(self, policy, prompts: list[list[int]], copies: int, seed: int) -> tuple[list, dict]:
        """``copies`` samples of each prompt from the sampler's server after syncing ``policy`` into
        it (the main process syncs, every process waits), and the sync's figures."""
        synced = self.sampler.sync_from_main(self.accelerator, policy)
        sampled = self.sampler.sample(prompts, copies, self.config.max_new_tokens, 1.0, 1.0, seed)
        prompts_each = [p for p in prompts for _ in range(copies)]
        return [TextExample.with_prompt(-1, list(p) + ids, len(p)) for p, (ids, _) in zip(prompts_each, sampled)], synced

    def reference_logprobs(self, reference: CausalLM, pairs: dict[str, list[PreferencePair]], path: str) -> dict:
        """``{split: (N, 2) [chosen, rejected]}`` log-probs of the reference, computed once and kept
        in ``path`` (written atomically; a resumed run reads it instead of running the reference)."""
        fingerprint = examples_fingerprint([e for items in pairs.values() for p in items for e in (p.chosen,
                                                                                                   p.rejected)])
        saved = load_if_exists(path)
        # every process looks before any writes: otherwise a process that looks after the main one saved would
        # return early and skip the barrier below that the others wait at (a hang seen with 2 processes)
        self.accelerator.wait_for_everyone()
        if saved is not None:
            if saved.get("fingerprint") != fingerprint:
                raise ValueError(f"the pairs differ from those whose reference log-probs are saved in {path} (the data "
                                 "changed since the run started): restore the data, or start anew with overwrite=true")
            return saved["logprobs"]
        pad = self.tokenizer.pad_token_id
        table = {split: torch.stack([sequence_logprobs(reference, [p.chosen for p in items], pad, self.signal),
                                     sequence_logprobs(reference, [p.rejected for p in items], pad, self.signal)], 1)
                 for split, items in pairs.items()}
        if self.accelerator.is_main_process:
            save_atomic({"fingerprint": fingerprint, "logprobs": table}, path)
        self.accelerator.wait_for_everyone()
        return table

    def held_out_metrics(self, model, held_out: list[PreferencePair], ref_table: Optional[Tensor]) -> dict:
        """Reward accuracy, mean margin and log-ratios of the held-out pairs under ``model``, and
        its probability mass on completions that are neither the chosen nor the rejected answer."""
        pad = self.tokenizer.pad_token_id
        core = self.accelerator.unwrap_model(model)
        chosen = sequence_logprobs(core, [p.chosen for p in held_out], pad, self.signal)
        rejected = sequence_logprobs(core, [p.rejected for p in held_out], pad, self.signal)
        ref = ref_table if ref_table is not None else torch.zeros(len(held_out), 2, dtype=torch.float64)
        rewards = self.config.preference_loss().implicit_rewards
        margins = rewards(chosen - ref[:, 0]) - rewards(rejected - ref[:, 1])
        return {"held_out_reward_accuracy": float((margins > 0).double().mean()),
                # the policy's mass on answers that are neither of the pair's (the paper's "unseen" responses)
                "held_out_unseen_mass": float((1 - chosen.exp() - rejected.exp()).clamp(min=0).mean()),
                "held_out_margin": float(margins.mean()),
                "held_out_chosen_logratio": float((chosen - ref[:, 0]).mean()),
                "held_out_rejected_logratio": float((rejected - ref[:, 1]).mean())}

    def kl_to_reference(self, model, reference: CausalLM, prompts: list[list[int]], seed: int) -> float:
        """Mean over ``prompts`` of the sequence KL(pi || ref): exact by enumeration, or the mean
        log-ratio of ``kl_samples`` samples per prompt (unbiased, seeded)."""
        config = self.config
        core = self.accelerator.unwrap_model(model)
        if config.kl_eval == "exact" or (config.kl_eval == "auto" and exact_kl_fits(core.vocab_size, config)
                                         and not is_fsdp(self.accelerator)):  # sharded: sampled (see setup)
            return float(exact_sequence_kl(core, reference, prompts, self.tokenizer.eos_token_id,
                                           config.max_new_tokens, max_sequences=EXACT_KL_LIMIT).mean())
        samples = generate_examples(core, [p for p in prompts for _ in range(config.kl_samples)], self.tokenizer,
                                    config.max_new_tokens, derive_seed(seed, 2_000_003))
        pad = self.tokenizer.pad_token_id
        return float((sequence_logprobs(core, samples, pad, self.signal)
                      - sequence_logprobs(reference, samples, pad, self.signal)).mean())

    def optimize(self, method: str, model: CausalLM, reference: Optional[CausalLM], pairs: list[PreferencePair],
                 ref_table: Optional[Tensor], evaluate, seed: int, checkpoint_path: str) -> dict:
        """One method's run from the warm-up weights: each step, ``batch_size`` pairs (global) by
        (seed, step); HyPO adds ``hypo_samples`` fresh samples of each pair's prompt from the
        current policy. ``ref_table``: the precomputed reference log-probs (None: computed live, or
        0 without a reference)."""
        accelerator, config = self.accelerator, self.config
        rank, processes = accelerator.process_index, accelerator.num_processes
        loss_module = config.preference_loss()
        pad, k = self.tokenizer.pad_token_id, config.hypo_samples
        hypo = method == "hypo"

        def step_fn(model, optimizer, step: int) -> dict:
            # eval mode throughout (no dropout, as TRL's default disable_dropout): the samples and the
            # log-probs of one step come from one policy
            model.eval()
            accelerator.unwrap_model(model).checkpointing_in_eval()
            indices = step_batch(len(pairs), config.batch_size, seed, step)[rank::processes].tolist()
            local = [pairs[i] for i in indices]
            samples, sample_ref, kl_estimate, synced = [], torch.zeros(0, dtype=torch.float64), None, {}
            if hypo:  # fresh samples of each local prompt from the current policy, and the reference's log-probs
                policy = accelerator.unwrap_model(model)
                if self.sampler is not None:  # from vLLM, the policy's weights synced this step
                    samples, synced = self.served_samples(policy, [prompt_of(p) for p in local], k,
                                                          derive_seed(seed, step, rank))
                else:
                    samples = generate_examples(policy, [prompt_of(p) for p in local for _ in range(k)],
                                                self.tokenizer, config.max_new_tokens, derive_seed(seed, step, rank))
                sample_ref = sequence_logprobs(reference, samples, pad, self.signal)
                logratios = sequence_logprobs(policy, samples, pad, self.signal) - sample_ref
                kl_estimate = global_mean(accelerator, logratios.tolist())
            micro = pair_micro_batches(local, indices, samples, sample_ref, ref_table, config.grad_accum, pad,
                                       k if hypo else 0)
            counts = pair_counts(accelerator, local, len(samples))
            loss_fn = pair_loss_fn(loss_module, reference, self.signal, config.hypo_coef if hypo else 0.0, k)
            totals = backward_micro_batches(accelerator, model, [to_device(b, accelerator.device) for b in micro],
                                            loss_fn, counts=counts)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            if kl_estimate is not None:
                totals["hypo_kl_estimate"] = kl_estimate  # the mean sequence log-ratio of the fresh samples
            return {**totals, **synced}

        spec = RunSpec(f"{method}-seed{seed}", config.steps, checkpoint_path, evaluate_every=config.eval_every,
                       checkpoint_every=config.checkpoint_every,
                       progress_keys=("test_accuracy", "held_out_reward_accuracy", "kl"), log_every_step=True)
        optimizer = functools.partial(torch.optim.AdamW, lr=config.lr, weight_decay=0.0)
        last: dict = {}  # the evaluation after the last step is the run's result (not measured twice)

        def evaluation(model, step: int, means: dict) -> dict:
            last.update(step=step, record=evaluate(model))
            return {**means, **last["record"]}

        def finish(model) -> dict:
            return {"metrics": last["record"] if last.get("step") == config.steps else evaluate(model)}

        return train_run(accelerator, spec, model, optimizer, step_fn, evaluation, finish, log_path=self.log_path)

    def accuracy(self, model, prompts: list[list[int]], problems: list[TaskProblem]) -> float:
        return exact_match_accuracy(self.accelerator, model, prompts, problems, self.tokenizer,
                                    self.config.max_new_tokens)


def pair_micro_batches(local: list[PreferencePair], indices: list[int], samples: list[TextExample],
                       sample_ref: Tensor, ref_table: Optional[Tensor], grad_accum: int, pad: int,
                       samples_per_pair: int) -> list[dict]:
    """This process's pairs (and HyPO's samples, ``samples_per_pair`` contiguous ones per pair,
    with the reference's sequence log-probs) as ``grad_accum`` micro-batches, each one batch of
    rows: chosen answers, rejected answers, then the samples of its pairs (whole groups, for the
    leave-one-out baseline); with the precomputed reference log-probs of its pairs (``ref_table``
    rows ``indices``)."""
    micro, k = [], samples_per_pair
    for part in range(grad_accum):
        chosen = local[part::grad_accum]
        rows = [row for pair in range(part, len(local), grad_accum) for row in range(pair * k, (pair + 1) * k)]
        batch = collate([p.chosen for p in chosen] + [p.rejected for p in chosen] + [samples[r] for r in rows], pad)
        batch["sample_ref_logprobs"] = sample_ref[torch.tensor(rows, dtype=torch.long)]
        if ref_table is not None:
            ref = ref_table[torch.tensor(indices[part::grad_accum], dtype=torch.long)]
            batch["ref_chosen"], batch["ref_rejected"] = ref[:, 0], ref[:, 1]
        micro.append(batch)
    return micro


def pair_counts(accelerator: Accelerator, local: list[PreferencePair], samples: int) -> PairCounts:
    """The global batch's pairs, chosen-answer tokens and samples (one all-reduce)."""
    chosen_tokens = sum(int(label != IGNORE_INDEX) for p in local for label in p.chosen.labels[1:])
    return PairCounts(*accelerator.reduce(torch.tensor([float(len(local)), float(chosen_tokens), float(samples)],
                                                       dtype=torch.float64, device=accelerator.device), "sum"))


def pair_loss_fn(loss_module: PreferenceLoss, reference: Optional[CausalLM], signal, hypo_coef: float,
                 samples_per_pair: int):
    """``loss_fn(model, micro_batch, counts)`` of one micro-batch of :func:`pair_micro_batches`:
    the preference loss of its pairs (normalized by the global pair and chosen-token counts) plus
    ``hypo_coef`` x HyPO's surrogate of its samples (:func:`divreg.losses.hypo_kl_surrogate`,
    normalized by the global sample count); the reference's log-probs live when they were not
    precomputed. ``signal(model, batch)`` gives a model's next-token signal."""

    def loss_fn(model, batch, counts):
        logprobs, mask = completion_logprobs(signal, model, batch)
        size = (logprobs.shape[0] - batch["sample_ref_logprobs"].shape[0]) // 2  # pairs in this micro-batch
        ref = (batch.get("ref_chosen"), batch.get("ref_rejected"))
        if ref[0] is None and reference is not None:  # the reference live, without gradient
            with torch.no_grad():
                ref_lp, _ = completion_logprobs(signal, reference, batch)
                ref_seq = torch.where(mask, ref_lp, 0.0).sum(1)
            ref = (ref_seq[:size], ref_seq[size:2 * size])
        out = loss_module(logprobs[:size], mask[:size], logprobs[size:2 * size], mask[size:2 * size], *ref,
                          num_pairs=counts.pairs, num_chosen_tokens=counts.chosen_tokens)
        loss = out.loss
        parts = {f"loss_{name}": value for name, value in out.parts.items()}
        if hypo_coef:
            sequence = torch.where(mask[2 * size:], logprobs[2 * size:], 0.0).sum(1)  # (samples,)
            surrogate = hypo_kl_surrogate(sequence, batch["sample_ref_logprobs"].to(sequence.dtype),
                                          samples_per_pair).sum() / counts.samples
            loss = loss + hypo_coef * surrogate
            parts["loss_hypo_kl"] = (hypo_coef * surrogate).detach()
        pairs_n = counts.pairs.to(out.margins.dtype)
        parts |= {"reward_accuracy": out.reward_accuracy.sum() / pairs_n, "margin": out.margins.sum() / pairs_n,
                  "chosen_logratio": out.chosen_logratios.sum() / pairs_n,
                  "rejected_logratio": out.rejected_logratios.sum() / pairs_n}
        return loss, {"loss": loss.detach(), **parts}

    return loss_fn
