"""Lp-Reg (Huang et al. 2025, arXiv 2510.03222) on a tabular two-step task: regularizing the
low-probability tokens of failed completions toward a min-p proxy keeps a rare but useful token
alive, where plain GRPO extinguishes it.

The policy writes two tokens: a "plan" (a common one, noise plans, and one rare, useful plan; the
probabilities are the settings in SETTINGS) and then an answer out of 16 (a table of logits per
plan, uniform at the start). The answer 0 is right: after the common plan it earns 0.5, after the
rare plan 1.0; every other completion earns 0. At the start a completion that uses the rare plan
is right only one time in 16, so most of its samples have a negative advantage and GRPO pushes
the plan down before its answer is learned. Lp-Reg regularizes only tokens above the min-p
threshold (kappa x the largest probability): in the third setting the rare plan (0.003) is below
it, i.e. "noise" by Lp-Reg's own definition. Training uses the library's `GRPOLoss` on sampled
groups (16 prompts x 8 completions per step, group-normalized advantages, on-policy, no KL, Adam
0.05), with and without `lp_reg` (kappa 0.02, beta 1; rho 0.1 instead of the paper's 0.01: with 256
tokens per step, 0.01 would select at most one token, which the official code does not
regularize). Tracked exactly from the tables: the probability of plan 7 and the expected reward.

    .venv/bin/python experiments/rl_lp_reg.py     # about a minute; writes outputs/experiments/rl_lp_reg.png
"""

from __future__ import annotations

import math
import statistics

import torch

from _verdict import experiment_parser, grade, print_rows, pyplot, sample_std, save_figure, seed_se
from divreg.losses import GRPOLoss, LpReg
from divreg.rl import group_advantages, lp_reg_token_mask, min_p_proxy_logprobs

torch.set_default_dtype(torch.float64)
# settings: (answers, p(common plan), p(rare useful plan), noise plans sharing the rest)
SETTINGS = [(16, 0.9, 0.03, 6), (16, 0.6, 0.03, 60), (16, 0.9, 0.003, 6)]


def expected_reward(plan_logits, answer_logits) -> float:
    plan = torch.softmax(plan_logits, -1)
    right = torch.softmax(answer_logits, -1)[:, 0]
    rare = plan_logits.shape[0] - 1
    return float(plan[0] * right[0] * 0.5 + plan[rare] * right[rare] * 1.0)


def train(seed: int, use_lp_reg: bool, steps: int, setting: tuple, prompts: int = 16, group: int = 8):
    answers_count, common, rare_prob, noise = setting
    plans_count = noise + 2  # plan 0: common; plans 1..noise: noise; the last: the rare, useful one
    generator = torch.Generator().manual_seed(seed)
    plan_logits = torch.tensor([math.log(common)] + [math.log((1 - common - rare_prob) / noise)] * noise
                               + [math.log(rare_prob)]).requires_grad_()
    answer_logits = torch.zeros(plans_count, answers_count).requires_grad_()
    value = {0: 0.5, plans_count - 1: 1.0}  # the reward of answering 0 after this plan
    optimizer = torch.optim.Adam([plan_logits, answer_logits], lr=0.05)
    loss_fn = GRPOLoss()
    rare, reward_curve = [], []
    for _ in range(steps):
        with torch.no_grad():
            rare.append(float(torch.softmax(plan_logits, -1)[-1]))
            reward_curve.append(expected_reward(plan_logits, answer_logits))
            n = prompts * group
            plans = torch.multinomial(torch.softmax(plan_logits, -1), n, replacement=True, generator=generator)
            answers = torch.multinomial(torch.softmax(answer_logits[plans], -1), 1, generator=generator).squeeze(-1)
            rewards = torch.tensor([value.get(int(p), 0.0) if int(a) == 0 else 0.0 for p, a in zip(plans, answers)])
            advantages = group_advantages(rewards, group, "group")
        tokens = torch.stack([plans, answers], -1)  # (n, 2)
        logprobs = torch.stack([torch.log_softmax(plan_logits, -1)[plans],
                                torch.log_softmax(answer_logits[plans], -1).gather(-1, answers[:, None]).squeeze(-1)],
                               -1)
        mask = torch.ones(n, 2, dtype=torch.bool)
        lp_reg = None
        if use_lp_reg:
            with torch.no_grad():  # the proxy of the sampling policy, per position
                proxy = torch.stack([min_p_proxy_logprobs(plan_logits.expand(n, plans_count), plans, kappa=0.02),
                                     min_p_proxy_logprobs(answer_logits[plans], answers, kappa=0.02)], -1)
                selected = lp_reg_token_mask(logprobs.detach(), proxy, advantages, mask, rho=0.1)
            lp_reg = LpReg(selected, proxy, 1.0)
        out = loss_fn(logprobs, None, advantages, mask, tokens=int(mask.sum()), sequences=n, lp_reg=lp_reg)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        del tokens
    rare.append(float(torch.softmax(plan_logits, -1)[-1].detach()))
    reward_curve.append(expected_reward(plan_logits.detach(), answer_logits.detach()))
    return rare, reward_curve


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for setting in SETTINGS:
        answers_count, common, rare_prob, noise = setting
        results = {(method, seed): train(seed, method == "lp_reg", args.steps, setting)
                   for method in ("grpo", "lp_reg") for seed in range(args.seeds)}
        for index, what in ((0, "probability of the rare useful plan"), (1, "expected reward")):
            a = [results[("lp_reg", seed)][index][-1] for seed in range(args.seeds)]
            b = [results[("grpo", seed)][index][-1] for seed in range(args.seeds)]
            rows.append({"claim": f"Lp-Reg keeps a higher {what} than plain GRPO (rare plan {rare_prob}, common "
                                  f"{common}, {noise} noise plans, {answers_count} answers)",
                         "our figure": f"{statistics.fmean(a):.3f} ± {sample_std(a):.3f} vs "
                                       f"{statistics.fmean(b):.3f} ± {sample_std(b):.3f} after {args.steps} "
                                       f"steps ({args.seeds} seeds)",
                         "verdict": grade(statistics.fmean(a), statistics.fmean(b),
                                          seed_se(sample_std(a), args.seeds),
                                          seed_se(sample_std(b), args.seeds))})
        if setting == SETTINGS[0]:
            shown = results  # the plot: the first setting, where the rare plan is above the min-p threshold
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, index, title in ((axes[0], 0, "p(rare useful plan)"), (axes[1], 1, "expected reward")):
        for method, color in (("grpo", "tab:blue"), ("lp_reg", "tab:green")):
            for seed in range(args.seeds):
                axis.plot(shown[(method, seed)][index], color=color, alpha=0.6,
                          label=method if seed == 0 else None)
        axis.set_title(f"{title} (rare plan 0.03, 6 noise plans)", fontsize=9)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    axes[0].set_yscale("log")
    save_figure(figure, args.output_dir, "rl_lp_reg.png")


if __name__ == "__main__":
    main()
