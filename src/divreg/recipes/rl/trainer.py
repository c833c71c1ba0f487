"""The two runs of one seed, on the shared run loop of :mod:`divreg.training`: the supervised
warm-up (CE on the task's answers) and the GRPO run (generate, reward, shape, clipped surrogate +
KL to the frozen reference). A generated batch is a typed :class:`divreg.rl.Rollout`; the policy
and the reference give *signals* (dense logits, or hidden states on the fused path, decided once
by :func:`divreg.targets.gives_hidden_states`); the paper options are shapers built once
(:mod:`.shaping`). All randomness is a function of (seed, step, process), so a run resumed from a
checkpoint samples the same completions and ends with the same weights."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor

from ...data import PromptExample, TextExample, collate, curriculum_weights
from ...estimators import k1
from ...losses import LpReg, kl_per_token
from ...models import CausalLM, generate_examples, greedy_completions, next_token_signal
from ...rl import (Rollout, ShapingContext, combine_rewards, exact_match, kl_target_signal, rollout_from_batch,
                   score_completions)
from ...schedules import AdaptiveKLController, Constant, LinearDecay, Schedule
from ...fused import TokenLogprobs
from ...targets import (DenseLogits, detached, gives_hidden_states, sampled_token_logprobs,
                        sampled_token_statistics, signal_divergence)
from ...training import (RunSpec, backward_micro_batches, derive_seed, global_mean, global_means, step_batch,
                         to_device, train_run)
from .._warmup import supervised_warmup
from .config import RLConfig
from .shaping import build_shapers


def kl_schedule(config: RLConfig) -> Schedule:
    if config.kl_target is not None:
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon, metric="kl_exact",
                                    count_metric="completions")
    if config.kl_coef_decay:
        return LinearDecay(config.kl_coef, config.kl_coef_floor, config.kl_coef_decay)
    return Constant(config.kl_coef)


LEAN_ROWS = 4  # completions per slice of the lean path's reference scoring (RLTrainer.score_in_loss)


def _rows(signal, rows: slice):
    """``signal`` (dense logits or hidden states, batch-first) restricted to ``rows``."""
    if isinstance(signal, DenseLogits):
        return DenseLogits(signal.logits[rows])
    return dataclasses.replace(signal, hidden=signal.hidden[rows])


def mismatch_stats(logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """The sampler/trainer mismatch on the sampled tokens: log p_trainer - log p_sampler and its
    k3 (an estimate of KL(sampler || trainer)), ``(values, mask)`` pairs for global means."""
    log_ratio = torch.where(mask, logprobs.double() - sampler_logprobs.double(), 0.0)
    return {"mismatch_log_ratio": (log_ratio, mask), "mismatch_k3": (log_ratio.exp() - 1 - log_ratio, mask)}


def kl_stats(policy_signal, ref_signal, rollout: Rollout, config: RLConfig,
             exact: Optional[Tensor] = None) -> dict[str, tuple[Tensor, Tensor]]:
    """The logged KL(pi || ref) per token: exact (``exact``, or computed from the signals), the
    configured estimator's value (k2's is biased), and how often k1 is negative; ``(values,
    mask)`` pairs for global means."""
    mask = rollout.mask
    if exact is None:
        exact = signal_divergence(policy_signal, ref_signal, mask, divergence="reverse_kl",
                                  temperature=config.temperature)  # (B, T)
    estimate = exact if config.kl_estimator == "exact" else kl_per_token(
        rollout.logprobs, rollout.ref_logprobs, config.kl_estimator, "reverse", config.kl_clamp)
    return {"kl_exact": (exact, mask), "kl_estimate": (estimate, mask),
            "k1_negative_fraction": ((k1(rollout.logprobs, rollout.ref_logprobs) < 0).double(), mask)}


def prompt_difficulties(train: list[PromptExample], config: RLConfig) -> np.ndarray:
    """(N,) each training prompt's difficulty for a curriculum: the built-in task's largest operand's
    number of digits, or the number in your data's ``difficulty_column`` (one line naming the record
    when it is missing or not a number)."""
    if config.data == "builtin":
        return np.array([max(len(n) for n in re.findall(r"\d+", p.prompt)) for p in train], dtype=np.float64)
    values = []
    for example in train:
        value = example.columns.get(config.difficulty_column)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"curriculum={config.curriculum} needs a number in the column {config.difficulty_column!r} "
                             f"of every prompt; {example.where} has {value!r} (set difficulty_column, or "
                             "curriculum=uniform)")
        values.append(float(value))
    return np.array(values)


class RLTrainer:
    """Warm-up and GRPO on a prompt set: ``train`` and ``test`` are :class:`divreg.data.PromptExample`
    lists (the built-in task's problems carry their ``answer`` column), ``reward_functions`` maps
    each name of ``config.rewards`` to a function with TRL's signature, ``columns`` names the prompt
    set's other columns (passed to the reward functions by name)."""

    def __init__(self, accelerator: Accelerator, config: RLConfig, tokenizer, train: list[PromptExample],
                 test: list[PromptExample], warmup_examples: list[TextExample], log_path: str,
                 reward_functions: dict, columns: list[str]):
        self.accelerator, self.config, self.tokenizer, self.log_path = accelerator, config, tokenizer, log_path
        self.train, self.test, self.warmup_examples = train, test, warmup_examples
        self.reward_functions, self.columns = reward_functions, columns
        self.difficulty = None if config.curriculum == "uniform" else prompt_difficulties(train, config)
        self.chat = not isinstance(train[0].prompt, str)  # completions reach the rewards as TRL's message lists
        full_logits = config.rapo or config.lp_reg  # RAPO reweights the reference's, Lp-Reg's proxy reads the policy's
        if full_logits and config.fused == "true":
            raise ValueError(f"{'rapo' if config.rapo else 'lp_reg'} needs full logits (RAPO reweights the "
                             "reference's, Lp-Reg's proxy reads the policy's), which fused=true never builds: set "
                             "fused=auto or false")
        hidden = gives_hidden_states("false" if full_logits else config.fused, len(tokenizer))
        self.hidden = hidden
        self.signal = functools.partial(next_token_signal, hidden=hidden)  # model, batch -> its next-token signal
        self.loss = config.grpo_loss()
        self.shapers = build_shapers(config, self.loss)
        self.sampler = config.generation.sampler(tokenizer, config.output_dir, accelerator)  # generation.server
        # one forward of the policy per step, the loss's, when nothing reads the policy's scores before the loss
        # (one update per batch; no KL in the reward, RAPO or Lp-Reg): the logged statistics (entropy, the exact KL
        # beside its estimate, the sampler mismatch) and the reference's log-probs are then computed in the loss's
        # micro-batches instead of in a separate no-gradient pass (benchmarks/vs_trl.py: that pass was the
        # difference with TRL's GRPO step)
        self.lean = (config.num_iterations == 1 and config.kl_placement == "loss" and not config.rapo
                     and not config.lp_reg)
        self.micro_stats: list[dict] = []  # the lean path's statistics of the step's micro-batches

    def evaluate(self, model) -> dict:
        """Greedy completions of the held-out prompts, scored: each reward function's mean (over the
        completions it applies to) as ``eval_<name>``, the combined reward's mean as ``eval_reward``,
        and, when the prompts have an ``answer`` column, the exact match as ``test_accuracy``."""
        texts, ids = greedy_completions(self.accelerator.unwrap_model(model), [p.prompt_ids for p in self.test],
                                        self.tokenizer, self.config.max_new_tokens, return_ids=True)
        per_function, combined = self.score(self.test, texts, ids)
        metrics = {"eval_reward": float(combined.mean())}
        for name, rewards in zip(self.reward_functions, per_function):
            applied = [float(r) for r in rewards if r is not None]
            metrics[f"eval_{name}"] = sum(applied) / len(applied) if applied else float("nan")
        if "answer" in self.columns:
            matches = exact_match(None, texts, answer=[p.columns.get("answer") for p in self.test])
            metrics["test_accuracy"] = sum(matches) / len(matches)
        return metrics

    def accuracy(self, model) -> float:
        """Held-out exact match (the warm-up's target; needs an ``answer`` column)."""
        return self.evaluate(model)["test_accuracy"]

    def warmup(self, model: CausalLM, seed: int, checkpoint_path: str, steps: Optional[int] = None,
               name: str = "warmup") -> dict:
        """Supervised warm-up: CE on prompt -> answer, for ``steps`` (default: ``warmup_steps``),
        stopped at ``warmup_target``; also how a separate reference is trained (its full steps)."""
        config = self.config
        target = config.warmup_target if name == "warmup" else None
        return supervised_warmup(self.accelerator, model, self.warmup_examples, self.tokenizer, name=f"{name}-seed{seed}",
                                 seed=seed, steps=config.warmup_steps if steps is None else steps,
                                 batch_size=config.warmup_batch_size, lr=config.warmup_lr,
                                 grad_accum=config.grad_accum, checkpoint_path=checkpoint_path,
                                 checkpoint_every=config.checkpoint_every * 4,
                                 accuracy=self.accuracy if "answer" in self.columns else
                                 (lambda model: self.evaluate(model)["eval_reward"]),
                                 target=target, eval_every=config.warmup_eval_every, log_path=self.log_path,
                                 metric="test_accuracy" if "answer" in self.columns else "eval_reward")

    def step_prompts(self, seed: int, step: int) -> torch.Tensor:
        """The global indices (prompts_per_step,) of the training prompts of ``step``: the seeded epoch
        order, or with a curriculum a draw without replacement weighted by
        :func:`divreg.data.curriculum_weights` at ``step / (steps - 1)`` (a function of the seed and the
        step: a resumed run draws the same)."""
        config = self.config
        if self.difficulty is None:
            return step_batch(len(self.train), config.prompts_per_step, seed, step)
        weights = curriculum_weights(self.difficulty, step / max(config.steps - 1, 1), config.curriculum,
                                     config.curriculum_sharpness)
        generator = torch.Generator().manual_seed(derive_seed(seed, step))
        return torch.multinomial(torch.as_tensor(weights), config.prompts_per_step, replacement=False,
                                 generator=generator)

    def generate(self, model, seed: int, step: int, copies: int,
                 stream: int = 0) -> tuple[list[TextExample], list[PromptExample]]:
        """``copies`` completions of each of this process's prompts at ``step`` (contiguous);
        ``stream`` 1 (CTRL's reference samples) draws as a virtual process past the real ones, so
        it never meets a policy stream of this run."""
        config, rank, processes = self.config, self.accelerator.process_index, self.accelerator.num_processes
        indices = self.step_prompts(seed, step)[rank::processes].tolist()
        prompts = [self.train[i] for i in indices for _ in range(copies)]
        if self.sampler is not None and stream == 0:  # the policy's samples come from the server (synced this step)
            sampled = self.sampler.sample([self.train[i].prompt_ids for i in indices], copies, config.max_new_tokens,
                                          config.temperature, config.top_p, derive_seed(seed, step, rank))
            examples = [TextExample.with_prompt(-1, list(p.prompt_ids) + ids, len(p.prompt_ids))
                        for p, (ids, _) in zip(prompts, sampled)]
            self.sampled_logprobs = [logprobs for _, logprobs in sampled]
            return examples, prompts
        examples = generate_examples(model, [p.prompt_ids for p in prompts], self.tokenizer, config.max_new_tokens,
                                     derive_seed(seed, step, rank + stream * processes),
                                     temperature=config.temperature, top_p=config.top_p)
        return examples, prompts

    def sampler_logprobs(self, examples: list[TextExample], shape: torch.Size) -> Tensor:
        """(B, T) the server's log-probs of the last :meth:`generate`'s completions, at their
        positions in the collated batch (0 elsewhere)."""
        table = torch.zeros(shape, dtype=torch.float32)
        for row, (example, logprobs) in enumerate(zip(examples, self.sampled_logprobs)):
            start = example.prompt_length - 1  # position t predicts token t + 1
            table[row, start:start + len(logprobs)] = torch.tensor(logprobs, dtype=torch.float32)
        return table

    def score(self, prompts: list[PromptExample], texts: list[str], ids: list[list[int]]) -> tuple[list, Tensor]:
        """Each reward function's rewards for the completions (TRL's call: prompts as given,
        completions as strings or, for chat prompts, one assistant message each, their token ids,
        and every column by name) and their weighted combination."""
        completions = [[{"role": "assistant", "content": t}] for t in texts] if self.chat else texts
        columns = {c: [p.columns.get(c) for p in prompts] for c in self.columns}
        per_function = score_completions(self.reward_functions, [p.prompt for p in prompts], completions, ids, columns,
                                         [p.where for p in prompts])
        return per_function, combine_rewards(per_function, list(self.reward_functions),
                                             [self.config.rewards[name] for name in self.reward_functions])

    def rewards(self, examples: list[TextExample], prompts: list[PromptExample]) -> tuple[Tensor, list[float]]:
        """The combined rewards of completions, and which are exactly right (all 0 without an
        ``answer`` column)."""
        ids = [e.input_ids[e.prompt_length:] for e in examples]
        texts = [self.tokenizer.decode([t for t in i if t != self.tokenizer.eos_token_id], skip_special_tokens=True)
                 for i in ids]
        _, combined = self.score(prompts, texts, ids)
        correct = (exact_match(None, texts, answer=[p.columns.get("answer") for p in prompts])
                   if "answer" in self.columns else [0.0] * len(texts))
        return combined, correct

    @torch.no_grad()
    def rollout(self, policy, reference, seed: int, step: int, kl_coef: float) -> tuple[Rollout, dict]:
        """One generated batch, scored by the policy (and the reference), then shaped; with the
        ``(values, mask)`` statistics to log."""
        config, accelerator = self.config, self.accelerator
        examples, prompts = self.generate(policy, seed, step, config.group_size)
        rewards, correct = self.rewards(examples, prompts)
        batch = to_device(collate(examples, self.tokenizer.pad_token_id), accelerator.device)
        rollout = rollout_from_batch(batch, rewards, correct).to(accelerator.device)
        if self.sampler is not None:
            rollout = rollout.replace(sampler_logprobs=self.sampler_logprobs(examples, rollout.mask.shape).to(
                accelerator.device))
        stats, policy_signal, ref_signal = {}, None, None
        if not self.lean:  # else scored in the loss's forward (see __init__): the shapers then read rewards only
            policy_signal = self.signal(policy, rollout.batch)
            scored = sampled_token_logprobs(policy_signal, rollout.targets, temperature=config.temperature)
            rollout = rollout.replace(logprobs=scored.logprobs)
            stats["entropy"] = (scored.entropy, rollout.mask)
            if self.sampler is not None:  # the sampler/trainer mismatch on the sampled tokens
                stats |= mismatch_stats(scored.logprobs, rollout.sampler_logprobs, rollout.mask)
            if reference is not None:
                ref_signal = self.signal(reference, rollout.batch)
                rollout = rollout.replace(ref_logprobs=sampled_token_logprobs(
                    ref_signal, rollout.targets, temperature=config.temperature).logprobs)
                stats |= kl_stats(policy_signal, ref_signal, rollout, config)
        context = ShapingContext(config.group_size, lambda t: accelerator.gather(t.to(accelerator.device)),
                                 accelerator.process_index, config.temperature, kl_coef, policy_signal, ref_signal,
                                 functools.partial(self.reference_rewards, reference, seed, step))
        for shaper in self.shapers:
            rollout = shaper(rollout, context)
        stats |= context.metrics
        if rollout.kl_weights is not None:
            stats["kl_weight"] = (rollout.kl_weights[:, None].expand(rollout.mask.shape).double(), rollout.mask)
        return rollout, stats

    def reference_rewards(self, reference, seed: int, step: int, copies: int) -> Tensor:
        """CTRL's calibration samples: the rewards of ``copies`` reference completions per prompt."""
        examples, prompts = self.generate(reference, seed, step, copies, stream=1)
        return self.rewards(examples, prompts)[0]

    def loss_fn(self, reference, kl_coef: float):
        """The GRPO loss of one micro-batch :class:`Rollout` (with the accumulation's global counts)."""
        config, loss_module = self.config, self.loss
        exact = config.kl_estimator == "exact" and kl_coef and reference is not None

        def loss_fn(model, micro: Rollout, counts):
            ref_signal, raw_ref, exact_kl = None, None, None
            one_pass = (self.lean and reference is not None and self.hidden
                        and not (exact and config.kl_direction == "forward"))
            if one_pass:  # the reference's hidden states first: its forward never overlaps the policy's graph
                with torch.no_grad():
                    raw_ref = self.signal(reference, micro.batch)
            signal = self.signal(model, micro.batch)
            if one_pass:
                # one pass over the vocabulary: the policy's log-probs and entropy, the exact KL to the reference
                # (the loss's, when kl_estimator=exact, and the logged one) and the reference's log-probs
                both = sampled_token_statistics(signal, raw_ref, micro.targets, temperature=config.temperature)
                scored, exact_kl = TokenLogprobs(both.logprobs, both.entropy), both.kl
                micro = self.lean_statistics(micro.replace(ref_logprobs=both.target_logprobs), scored, both.kl)
                if not exact:
                    exact_kl = None
            else:
                scored = sampled_token_logprobs(signal, micro.targets, temperature=config.temperature)
                if exact:  # the KL's target (RAPO's reweighting, when the rollout carries it), without gradient
                    with torch.no_grad():
                        raw_ref = self.signal(reference, micro.batch)
                    ref_signal = kl_target_signal(raw_ref, micro.ref_phi, config.temperature)
                if self.lean:  # this micro-batch's reference log-probs and logged statistics (see __init__)
                    micro = self.score_in_loss(micro, signal, scored, reference, raw_ref)
            lp_reg = None if micro.lp_selected is None else LpReg(micro.lp_selected, micro.proxy_logprobs,
                                                                  config.lp_reg_coef)
            result = loss_module(scored.logprobs, micro.logprobs if config.num_iterations > 1 else None,
                                 micro.advantages, micro.mask, tokens=counts.tokens, sequences=counts.sequences,
                                 ref_logprobs=micro.ref_logprobs, kl_coef=kl_coef, kl_weights=micro.kl_weights,
                                 exact_kl=exact_kl, lp_reg=lp_reg, policy_signal=signal, ref_signal=ref_signal,
                                 sampler_logprobs=micro.sampler_logprobs)
            loss, parts = result.loss, {"policy_loss": result.policy_loss, "kl_term": result.kl}
            if config.entropy_coef:  # an entropy bonus, aggregated like the loss
                entropy = loss_module.reduction(scored.entropy, micro.mask,
                                                loss_module.count(counts.tokens, counts.sequences))
                loss = loss - config.entropy_coef * entropy
                parts["entropy_term"] = entropy.detach()
            return loss, {"loss": loss.detach(), **parts}

        return loss_fn

    @torch.no_grad()
    def lean_statistics(self, micro: Rollout, scored: TokenLogprobs, exact_kl: Tensor) -> Rollout:
        """The lean path on hidden states (see ``__init__``): this micro-batch's statistics, from
        the one-pass values (``micro`` carries the reference's log-probs already)."""
        logprobs, mask = scored.logprobs.detach(), micro.mask
        stats = {"entropy": (scored.entropy.detach(), mask)}
        if micro.sampler_logprobs is not None:
            stats |= mismatch_stats(logprobs, micro.sampler_logprobs, mask)
        stats |= kl_stats(None, None, micro.replace(logprobs=logprobs), self.config,
                          exact=exact_kl.detach().masked_fill(~mask, 0.0))
        self.micro_stats.append(stats)
        return micro

    @torch.no_grad()
    def score_in_loss(self, micro: Rollout, signal, scored, reference, raw_ref) -> Rollout:
        """The lean path (see ``__init__``): ``micro`` with the reference's log-probs, and this
        micro-batch's statistics (those the separate pass logs) kept in ``micro_stats``. The
        reference runs (and the exact KL is computed) ``LEAN_ROWS`` completions at a time, so
        that beside the policy's graph only a slice of the reference's logits is alive
        (``raw_ref``: the reference's signal of the whole micro-batch when the loss needs it)."""
        config, mask = self.config, micro.mask
        logprobs = scored.logprobs.detach()
        stats = {"entropy": (scored.entropy.detach(), mask)}
        if micro.sampler_logprobs is not None:
            stats |= mismatch_stats(logprobs, micro.sampler_logprobs, mask)
        if reference is not None:
            policy, parts, ref_logprobs = detached(signal), [], []
            for start in range(0, len(micro), LEAN_ROWS):
                rows = slice(start, start + LEAN_ROWS)
                sub = micro.replace(**{f.name: getattr(micro, f.name)[rows] for f in dataclasses.fields(micro)
                                       if isinstance(getattr(micro, f.name), Tensor)})
                ref = _rows(raw_ref, rows) if raw_ref is not None else self.signal(reference, sub.batch)
                ref_logprobs.append(sampled_token_logprobs(ref, sub.targets, temperature=config.temperature).logprobs)
                parts.append(kl_stats(_rows(policy, rows), ref, sub.replace(logprobs=logprobs[rows],
                                                                            ref_logprobs=ref_logprobs[-1]), config))
            micro = micro.replace(ref_logprobs=torch.cat(ref_logprobs))
            stats |= {key: tuple(torch.cat([part[key][i] for part in parts]) for i in (0, 1)) for key in parts[0]}
        self.micro_stats.append(stats)
        return micro

    def grpo(self, model: CausalLM, reference: Optional[CausalLM], seed: int, checkpoint_path: str) -> dict:
        """The GRPO run from the warm-up weights; ``reference`` frozen (None when no KL is used)."""
        accelerator, config = self.accelerator, self.config
        beta = kl_schedule(config)

        def step_fn(model, optimizer, step: int) -> dict:
            # scored in eval mode, like the sampling: no dropout, so the log-probs are those of the
            # policy that generated the completions (the KL estimators assume on-policy samples)
            model.eval()
            accelerator.unwrap_model(model).checkpointing_in_eval()
            coef = beta(step)
            synced = {} if self.sampler is None else self.sampler.sync_from_main(  # this step's weights, checked
                accelerator, accelerator.unwrap_model(model))
            rollout, stats = self.rollout(accelerator.unwrap_model(model), reference, seed, step, coef)
            micro = rollout.micro_batches(config.grad_accum)
            self.micro_stats = []
            for _ in range(config.num_iterations):
                totals = backward_micro_batches(accelerator, model, micro, self.loss_fn(reference, coef))
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            for key in (self.micro_stats[0] if self.micro_stats else {}):  # the lean path's, over the whole batch
                stats[key] = tuple(torch.cat([parts[key][i] for parts in self.micro_stats]) for i in (0, 1))
            completions = float(accelerator.reduce(torch.tensor(float(len(rollout)), device=accelerator.device),
                                                   "sum"))
            metrics = {**totals, **global_means(accelerator, stats), **synced, "kl_coef": coef,
                       "reward": global_mean(accelerator, rollout.task_rewards.tolist()),
                       **({"train_exact_match": global_mean(accelerator, rollout.correct.tolist())}
                          if "answer" in self.columns else {}),
                       "completion_tokens": float(accelerator.reduce(rollout.mask.sum().double(), "sum")) / completions}
            if "kl_exact" in metrics:
                metrics["kl_gap"] = metrics["kl_estimate"] - metrics["kl_exact"]
            beta.observe({**metrics, "completions": completions})
            return metrics

        spec = RunSpec(f"grpo-seed{seed}", config.steps, checkpoint_path, evaluate_every=config.eval_every,
                       checkpoint_every=config.checkpoint_every,
                       progress_keys=("test_accuracy" if "answer" in self.columns else "eval_reward", "reward"),
                       log_every_step=True)
        optimizer = functools.partial(torch.optim.AdamW, lr=config.lr, weight_decay=0.0)
        return train_run(accelerator, spec, model, optimizer, step_fn,
                         lambda model, step, means: {**means, **self.evaluate(model)},
                         lambda model: {"metrics": self.evaluate(model)},
                         components={"kl_coef": beta}, log_path=self.log_path)
