"""The two runs of one seed, on the shared run loop of :mod:`divreg.training`: the supervised
warm-up (CE on the task's answers) and the GRPO run (generate, reward, advantages, clipped
surrogate + KL to the frozen reference). All randomness is a function of (seed, step, process),
so a run resumed from a checkpoint samples the same completions and ends with the same weights."""

from __future__ import annotations

import functools
from typing import Optional

import torch
from accelerate import Accelerator
from torch import Tensor

from ...data import (IGNORE_INDEX, TaskProblem, TextExample, collate, exact_match_reward, format_reward, task_records,
                     tokenize_records)
from ...divergences import forward_kl, reverse_kl
from ...estimators import k1
from ...fused import fused_linear_divergence, token_logprobs
from ...losses import LpReg, kl_per_token
from ...rl import (calibrated_rewards, combine_rewards, ctrl_transform, dads_kl_weights, group_advantages,
                   lp_reg_token_mask, min_p_proxy_logprobs, reweighted_reference_logits, stcr_advantages)
from ...models import CausalLM, generate_examples
from ...schedules import AdaptiveKLController, Constant, LinearDecay, Schedule
from ...training import RunSpec, backward_micro_batches, derive_seed, step_batch, train_run
from .._lm_task import completion_signal, exact_match_accuracy, global_mean, global_means, supervised_warmup, to_device
from .config import RLConfig

REWARDS = {"exact_match": exact_match_reward, "format": format_reward}
FUSED_AUTO_VOCAB = 32768  # at least this many tokens: per-token log-probs and the exact KL go through divreg.fused


def exact_kl(policy_out: Tensor, ref_out: Tensor, policy, reference, mask: Tensor, config: RLConfig, fused: bool,
             forward: bool = False) -> Tensor:
    """The exact full-vocabulary KL(pi || ref) (``forward``: KL(ref || pi)) at every completion
    position (B, T-1), 0 off the mask, differentiable through ``policy_out`` (the policy's logits,
    or its hidden states on the fused path)."""
    if fused:
        core = policy.module if hasattr(policy, "module") else policy
        labels = torch.where(mask, 0, IGNORE_INDEX)  # only the mask matters here
        return fused_linear_divergence(policy_out, core.output_weight, ref_out, reference.output_weight,
                                       divergence="forward_kl" if forward else "reverse_kl",
                                       temperature=config.temperature, labels=labels, bias=core.output_bias,
                                       target_bias=reference.output_bias, reduction="none").view(mask.shape)
    return (forward_kl if forward else reverse_kl)(policy_out, ref_out, temperature=config.temperature, mask=mask)


def rapo_target(ref_logits: Tensor, phi: Tensor, temperature: float) -> Tensor:
    """RAPO's reweighted reference as logits *before* the temperature (the divergences and
    ``token_logprobs`` divide by it again): ``T * phi * log softmax(ref / T)``."""
    return reweighted_reference_logits(ref_logits, phi.to(ref_logits.device), temperature=temperature) * temperature


def kl_schedule(config: RLConfig) -> Schedule:
    if config.kl_target is not None:
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon, metric="kl_exact",
                                    count_metric="completions")
    if config.kl_coef_decay:
        return LinearDecay(config.kl_coef, config.kl_coef_floor, config.kl_coef_decay)
    return Constant(config.kl_coef)


class RLTrainer:
    def __init__(self, accelerator: Accelerator, config: RLConfig, tokenizer, train: list[TaskProblem],
                 test: list[TaskProblem], warmup_examples: list[TextExample], log_path: str):
        self.accelerator, self.config, self.tokenizer, self.log_path = accelerator, config, tokenizer, log_path
        self.train, self.test, self.warmup_examples = train, test, warmup_examples
        self.fused = config.fused == "true" or (config.fused == "auto" and len(tokenizer) >= FUSED_AUTO_VOCAB)
        if self.fused and config.rapo:
            raise ValueError(f"rapo reweights the reference's full logits per position, and this {len(tokenizer)}-token "
                             "vocabulary turns the fused path on: set fused=false")
        if self.fused and config.lp_reg:
            raise ValueError(f"lp_reg needs the sampling policy's full logits (its min-p proxy), and this "
                             f"{len(tokenizer)}-token vocabulary turns the fused path on: set fused=false")
        if self.fused and config.kl_estimator == "exact" and (config.dads or config.kl_mask_correct):
            raise ValueError("the fused exact KL reduces inside its kernel, without per-completion weights: use "
                             "kl_estimator=k3 (or k2) with dads / kl_mask_correct, or fused=false")
        # one tokenization of the prompts for warm-up, sampling and evaluation (tokenize_records: with the
        # tokenizer's special tokens or chat template, if it has them)
        if len(warmup_examples) != len(train):
            raise ValueError(f"{len(train) - len(warmup_examples)} training problems do not fit the tokenizer's "
                             "examples (prompt + answer + EOS within 64 tokens); use a tokenizer with shorter prompts")
        self.prompt_ids = [e.input_ids[:e.prompt_length] for e in warmup_examples]
        test_examples = tokenize_records(task_records(test), tokenizer, max_length=64, prompt_len=1)
        self.test_prompt_ids = [e.input_ids[:e.prompt_length] for e in test_examples]

    def accuracy(self, model) -> float:
        """Exact-match accuracy of greedy completions on the held-out problems."""
        return exact_match_accuracy(self.accelerator, model, self.test_prompt_ids, self.test, self.tokenizer,
                                    self.config.max_new_tokens)

    def warmup(self, model: CausalLM, seed: int, checkpoint_path: str, steps: Optional[int] = None,
               name: str = "warmup") -> dict:
        """Supervised warm-up: CE on prompt -> answer, for ``steps`` (default: ``warmup_steps``),
        stopped at ``warmup_target``; also how a separate reference is trained (its full steps)."""
        config = self.config
        return supervised_warmup(self.accelerator, model, self.warmup_examples, self.tokenizer, name=f"{name}-seed{seed}",
                                 seed=seed, steps=config.warmup_steps if steps is None else steps,
                                 batch_size=config.warmup_batch_size, lr=config.warmup_lr,
                                 grad_accum=config.grad_accum, checkpoint_path=checkpoint_path,
                                 checkpoint_every=config.checkpoint_every * 4, accuracy=self.accuracy,
                                 target=config.warmup_target if name == "warmup" else None,
                                 eval_every=config.warmup_eval_every, log_path=self.log_path)

    def grpo(self, model: CausalLM, reference: Optional[CausalLM], seed: int, checkpoint_path: str) -> dict:
        """The GRPO run from the warm-up weights; ``reference`` frozen (None when no KL is used)."""
        accelerator, config = self.accelerator, self.config
        rank, processes = accelerator.process_index, accelerator.num_processes
        grpo = config.grpo_loss()
        beta = kl_schedule(config)
        names, weights = list(config.rewards), list(config.rewards.values())
        group = config.group_size

        def generate(model, step: int, copies: int, stream: int = 0) -> tuple[list[TextExample], list[TaskProblem]]:
            """``copies`` completions of each of this process's prompts at ``step`` (contiguous);
            ``stream`` 1 (CTRL's reference samples) draws as a virtual process past the real ones,
            so it never meets a policy stream of this run."""
            indices = step_batch(len(self.train), config.prompts_per_step, seed, step)[rank::processes].tolist()
            problems = [self.train[i] for i in indices for _ in range(copies)]
            prompts = [self.prompt_ids[i] for i in indices for _ in range(copies)]
            examples = generate_examples(model, prompts, self.tokenizer, config.max_new_tokens,
                                         derive_seed(seed, step, rank + stream * processes),
                                         temperature=config.temperature,
                                         top_p=config.top_p)
            return examples, problems

        def calibrated(rewards: Tensor, step: int) -> Tensor:
            """CTRL: each completion's reward calibrated against ``ctrl_samples`` completions of the
            reference for the same prompt (their own random stream), then transformed."""
            examples, problems = generate(reference, step, config.ctrl_samples, 1)
            reference_rewards, _ = reward_of(examples, problems)
            table = calibrated_rewards(rewards.view(-1, group), reference_rewards.view(-1, config.ctrl_samples))
            return ctrl_transform(table, config.ctrl, config.ctrl_t).reshape(-1)

        def reward_of(examples: list[TextExample], problems: list[TaskProblem]) -> tuple[Tensor, list[float]]:
            """The combined rewards of completions, and which are exactly right."""
            texts = [self.tokenizer.decode([t for t in e.input_ids[e.prompt_length:]
                                            if t != self.tokenizer.eos_token_id], skip_special_tokens=True)
                     for e in examples]
            answers = [p.answer for p in problems]
            return (combine_rewards([REWARDS[name](texts, answers) for name in names], names, weights),
                    exact_match_reward(texts, answers))

        def step_fn(model, optimizer, step: int) -> dict:
            # scored in eval mode, like the sampling: no dropout, so the log-probs are those of the
            # policy that generated the completions (the KL estimators assume on-policy samples)
            model.eval()
            policy = accelerator.unwrap_model(model)
            examples, problems = generate(policy, step, group)
            rewards, correct = reward_of(examples, problems)
            task_rewards = rewards
            task_reward = global_mean(accelerator, rewards.tolist())  # before any transform or KL penalty
            shaped_reward = None
            if config.ctrl != "none":
                rewards = calibrated(rewards, step)
                shaped_reward = global_mean(accelerator, rewards.tolist())
            batch = to_device(collate(examples, self.tokenizer.pad_token_id), accelerator.device)
            coef = beta(step)
            with torch.no_grad():
                logprobs, entropy, mask, policy_out = completion_signal(policy, batch, config.temperature, self.fused)
                stats = {"entropy": (entropy, mask)}
                if reference is not None:
                    ref_logprobs, _, _, ref_out = completion_signal(reference, batch, config.temperature, self.fused)
                    batch["ref_logprobs"] = ref_logprobs
                    exact = exact_kl(policy_out, ref_out, policy, reference, mask, config, self.fused)  # KL(pi||ref)
                    # the configured estimator's value (exact: the exact KL itself); k2's is biased
                    estimate = exact if config.kl_estimator == "exact" else kl_per_token(
                        logprobs, ref_logprobs, config.kl_estimator, "reverse", config.kl_clamp)
                    stats |= {"kl_exact": (exact, mask), "kl_estimate": (estimate, mask),
                              "k1_negative_fraction": ((k1(logprobs, ref_logprobs) < 0).double(), mask)}
                    rewards = grpo.penalized_rewards(rewards.to(logprobs.dtype), logprobs, ref_logprobs, mask, coef)
                    if config.rapo:  # the loss's KL target: the reference reweighted by each completion's reward
                        batch["rapo_phi"] = (task_rewards.double() / sum(weights)).clamp(0, 1).to(accelerator.device)
                        batch["ref_logprobs"] = token_logprobs(
                            rapo_target(ref_out, batch["rapo_phi"], config.temperature), batch["labels"][:, 1:],
                            temperature=config.temperature, ignore_index=IGNORE_INDEX)
                if config.num_iterations > 1:
                    batch["old_logprobs"] = logprobs
            all_rewards = accelerator.gather(rewards.to(accelerator.device))  # (global completions,), rank-major
            advantages = group_advantages(all_rewards.double(), group, config.advantage_scale, config.advantage_eps)
            local = rewards.shape[0]
            mine = slice(rank * local, (rank + 1) * local)
            if config.stcr or config.dads:  # per group: which completions are right, and (STCR) their lengths
                all_correct = accelerator.gather(torch.tensor(correct, dtype=torch.float64, device=accelerator.device))
                if config.stcr:
                    all_lengths = accelerator.gather(mask.sum(-1).double().to(accelerator.device))
                    advantages = stcr_advantages(advantages, all_lengths, all_correct, group, base=config.stcr_base)
                if config.dads:
                    batch["kl_weights"] = dads_kl_weights(all_correct, advantages, group,
                                                          scale=config.dads_scale)[mine].to(accelerator.device)
            if config.kl_mask_correct:
                keep = 1.0 - torch.tensor(correct, dtype=torch.float64, device=accelerator.device)
                batch["kl_weights"] = batch.get("kl_weights", torch.ones_like(keep)) * keep
            batch["advantages"] = advantages[mine].to(accelerator.device)
            if config.lp_reg:  # the min-p proxy of the sampling policy, and the tokens it regularizes
                proxy = min_p_proxy_logprobs(policy_out, batch["labels"][:, 1:], kappa=config.lp_reg_kappa,
                                             temperature=config.temperature, ignore_index=IGNORE_INDEX)
                batch["proxy_logprobs"] = proxy
                batch["lp_selected"] = lp_reg_token_mask(logprobs, proxy, batch["advantages"], mask,
                                                         rho=config.lp_reg_rho)
                stats["lp_reg_tokens"] = (batch["lp_selected"].double(), mask)
            if "kl_weights" in batch:
                stats["kl_weight"] = (batch["kl_weights"][:, None].expand(mask.shape).double(), mask)
            micro = [{k: v[i::config.grad_accum] for k, v in batch.items()} for i in range(config.grad_accum)]

            def loss_fn(model, micro_batch, counts):
                logprobs, entropy, mask, out = completion_signal(model, micro_batch, config.temperature, self.fused)
                exact_term, fused_kl = None, None
                if config.kl_estimator == "exact" and coef and reference is not None:
                    forward = config.kl_direction == "forward"
                    with torch.no_grad():
                        *_, ref_out = completion_signal(reference, micro_batch, config.temperature, self.fused)
                    if self.fused:  # the kernel reduces like the loss (its per-token values carry no gradient)
                        core = model.module if hasattr(model, "module") else model
                        fused_kl = fused_linear_divergence(
                            out, core.output_weight, ref_out, reference.output_weight,
                            divergence="forward_kl" if forward else "reverse_kl", temperature=config.temperature,
                            labels=torch.where(mask, 0, IGNORE_INDEX), bias=core.output_bias,
                            target_bias=reference.output_bias, reduction=grpo.reduction,
                            num_items_in_batch=grpo.count(counts.tokens, counts.sequences))
                    else:
                        if config.rapo:
                            ref_out = rapo_target(ref_out, micro_batch["rapo_phi"], config.temperature)
                        exact_term = exact_kl(out, ref_out, model, reference, mask, config, False, forward=forward)
                lp_reg = LpReg(micro_batch["lp_selected"], micro_batch["proxy_logprobs"],
                               config.lp_reg_coef) if config.lp_reg else None
                result = grpo(logprobs, micro_batch.get("old_logprobs"), micro_batch["advantages"], mask,
                              tokens=counts.tokens, sequences=counts.sequences,
                              ref_logprobs=micro_batch.get("ref_logprobs"), kl_coef=0.0 if fused_kl is not None
                              else coef, exact_kl=exact_term, kl_weights=micro_batch.get("kl_weights"), lp_reg=lp_reg)
                loss, kl_part = result.loss, result.kl
                if fused_kl is not None:
                    loss, kl_part = loss + coef * fused_kl, fused_kl.detach()
                parts = {"policy_loss": result.policy_loss, "kl_term": kl_part}
                if config.entropy_coef:  # an entropy bonus, aggregated like the loss
                    entropy_term = grpo.reduction(entropy, mask, grpo.count(counts.tokens, counts.sequences))
                    loss = loss - config.entropy_coef * entropy_term
                    parts["entropy_term"] = entropy_term.detach()
                return loss, {"loss": loss.detach(), **parts}

            for _ in range(config.num_iterations):
                totals = backward_micro_batches(accelerator, model, micro, loss_fn)
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            metrics = {**totals, **global_means(accelerator, stats), "kl_coef": coef,
                       "reward": task_reward,
                       "train_exact_match": global_mean(accelerator, correct),
                       "completion_tokens": float(accelerator.reduce(mask.sum().double(), "sum"))
                       / float(all_rewards.numel())}
            if shaped_reward is not None:
                metrics["ctrl_reward"] = shaped_reward  # the transformed calibrated reward the advantages use
            if "kl_exact" in metrics:
                metrics["kl_gap"] = metrics["kl_estimate"] - metrics["kl_exact"]
            beta.observe({**metrics, "completions": float(all_rewards.numel())})
            return metrics

        spec = RunSpec(f"grpo-seed{seed}", config.steps, checkpoint_path, evaluate_every=config.eval_every,
                       checkpoint_every=config.checkpoint_every, progress_keys=("test_accuracy", "reward"),
                       log_every_step=True)
        optimizer = functools.partial(torch.optim.AdamW, lr=config.lr, weight_decay=0.0)
        return train_run(accelerator, spec, model, optimizer, step_fn,
                         lambda model, step, means: {**means, "test_accuracy": self.accuracy(model)},
                         lambda model: {"metrics": {"test_accuracy": self.accuracy(model)}},
                         components={"kl_coef": beta}, log_path=self.log_path)

