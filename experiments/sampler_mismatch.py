r"""The sampler/trainer mismatch and its correction (Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"; Liu et al. 2025 for masked IS) on a tabular task:
completions drawn from a sampler that is not the policy being trained bias the policy gradient,
and truncated importance sampling (TIS, min(pi/q, 2)) brings training back toward on-policy.

Eight prompts, each a categorical policy over 16 answers (uniform at the start); one answer per
prompt has reward 1, the others rewards uniform in [0, 0.6] (fixed per seed). GRPO with the
library's GRPOLoss (group-normalized advantages, no KL, 8 prompts x 8 completions per step, Adam
0.05, 150 steps). The samples come from a deliberately mismatched sampler, as an inference engine
in another precision or a stale weight version would give:

- ``noisy``: the sampler's logits are the policy's plus Gaussian noise (std 1.5, fixed per step
  and prompt): a systematically different engine, exaggerated so the effect is visible;
- ``stale``: the sampler is the policy of 10 steps before (asynchronous RL).

Two measurements, each exact from the table:

1. **The gradient's bias** (the blog's argument): at the policies an on-policy run passes through
   (every 10th step), the expected update direction under each correction with the mismatched
   sampler, :math:`\sum_a q(a)\,w(a)\,(r(a) - E_q r)\,\nabla\log\pi(a)`, against the on-policy
   one, :math:`\sum_a \pi(a)\,(r(a) - E_\pi r)\,\nabla\log\pi(a)`: their cosine, averaged over
   prompts, states and seeds. Graded: TIS's is closer to on-policy than no correction's.
2. **Training**: each correction trained with the sampled estimator (150 steps), the expected
   reward under the policy averaged over the run (the area under the learning curve; the final
   value saturates near 1 on this task) and at the end, against on-policy sampling. Graded: TIS
   learns faster than no correction. (MIS is reported, not graded: the blogs recommend it at the
   sequence level.)

    .venv/bin/python experiments/sampler_mismatch.py   # about a minute; outputs/experiments/sampler_mismatch.png
"""

from __future__ import annotations

import statistics

import torch

from _verdict import experiment_parser, grade, print_rows, pyplot, sample_std, save_figure, seed_se
from divreg.losses import GRPOLoss
from divreg.rl import group_advantages

torch.set_default_dtype(torch.float64)
PROMPTS, ANSWERS, GROUP, LAG, NOISE = 8, 16, 8, 10, 1.5
CORRECTIONS = ("none", "tis", "mis")


def rewards_table(generator: torch.Generator) -> torch.Tensor:
    table = torch.rand(PROMPTS, ANSWERS, generator=generator) * 0.6
    table[torch.arange(PROMPTS), torch.randint(ANSWERS, (PROMPTS,), generator=generator)] = 1.0
    return table


def train(seed: int, mismatch: str, correction: str, steps: int) -> dict:
    """One run; ``mismatch`` "on_policy", "noisy" or "stale"."""
    generator = torch.Generator().manual_seed(seed)
    table = rewards_table(generator)
    logits = torch.zeros(PROMPTS, ANSWERS, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    loss_fn = GRPOLoss(sampler_correction=correction, sampler_cap=2.0)
    prompts = torch.arange(PROMPTS).repeat_interleave(GROUP)  # groups contiguous
    history, mismatch_kl, curve = [logits.detach().clone()], [], []
    for _ in range(steps):
        with torch.no_grad():
            if mismatch == "noisy":
                sampler_logits = logits + NOISE * torch.randn(PROMPTS, ANSWERS, generator=generator)
            elif mismatch == "stale":
                sampler_logits = history[max(0, len(history) - 1 - LAG)]
            else:
                sampler_logits = logits.detach()
            log_q = torch.log_softmax(sampler_logits, -1)
            log_pi = torch.log_softmax(logits, -1)
            mismatch_kl.append(float((log_q.exp() * (log_q - log_pi)).sum(-1).mean()))
            answers = torch.multinomial(log_q[prompts].exp(), 1, generator=generator).squeeze(-1)
            advantages = group_advantages(table[prompts, answers], GROUP, "group")
            sampler_logprobs = log_q[prompts].gather(-1, answers[:, None])
        logprobs = torch.log_softmax(logits[prompts], -1).gather(-1, answers[:, None])  # (64, 1)
        mask = torch.ones_like(logprobs, dtype=torch.bool)
        out = loss_fn(logprobs, None, advantages, mask, tokens=len(prompts), sequences=len(prompts),
                      sampler_logprobs=sampler_logprobs)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append(logits.detach().clone())
        curve.append(float((torch.softmax(logits.detach(), -1) * table).sum(-1).mean()))
    best = float(table.max(-1).values.mean())
    return {"reward": curve[-1], "auc": statistics.fmean(curve), "best": best, "curve": curve,
            "mismatch_kl": statistics.fmean(mismatch_kl), "history": history, "table": table}


def expected_direction(theta: torch.Tensor, sampler_logits: torch.Tensor, table: torch.Tensor,
                       correction: str) -> torch.Tensor:
    """(P, A) the exact expected update of the sampled estimator: sum_a q w (r - E_q r)(e_a - pi)."""
    from divreg.losses import sampler_weights

    log_pi, log_q = torch.log_softmax(theta, -1), torch.log_softmax(sampler_logits, -1)
    pi, q = log_pi.exp(), log_q.exp()
    if correction == "on_policy":
        coefficient = pi * (table - (pi * table).sum(-1, keepdim=True))
    else:
        weights = sampler_weights(log_pi, log_q, correction, 2.0)
        coefficient = q * weights * (table - (q * table).sum(-1, keepdim=True))
    return coefficient - coefficient.sum(-1, keepdim=True) * pi  # sum_a c_a (e_a - pi)


def gradient_cosines(seed: int, run: dict) -> dict:
    """Mean cosine with the on-policy direction, per mismatch and correction, along ``run``'s states."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    history, table = run["history"], run["table"]
    cosines = {(m, c): [] for m in ("noisy", "stale") for c in CORRECTIONS}
    for t in range(LAG, len(history) - 1, 10):
        theta = history[t]
        on_policy = expected_direction(theta, theta, table, "on_policy")
        samplers = {"noisy": theta + NOISE * torch.randn(PROMPTS, ANSWERS, generator=generator),
                    "stale": history[t - LAG]}
        for (mismatch, correction), values in cosines.items():
            direction = expected_direction(theta, samplers[mismatch], table, correction)
            values.append(float(torch.nn.functional.cosine_similarity(direction, on_policy, dim=-1).mean()))
    return {key: statistics.fmean(values) for key, values in cosines.items()}


def main() -> None:
    parser = experiment_parser(__doc__, seeds=8, steps=150)
    args = parser.parse_args()
    runs = {("on_policy", "none"): None, **{(m, c): None for m in ("noisy", "stale") for c in CORRECTIONS}}
    for key in runs:
        runs[key] = [train(seed, key[0], key[1], args.steps) for seed in range(args.seeds)]
    cosines = [gradient_cosines(seed, run) for seed, run in enumerate(runs[("on_policy", "none")])]

    def stats(values):
        return statistics.fmean(values), sample_std(values)

    auc = {key: stats([r["auc"] for r in results]) for key, results in runs.items()}
    final = {key: stats([r["reward"] for r in results]) for key, results in runs.items()}
    cosine = {key: stats([c[key] for c in cosines]) for key in cosines[0]}
    print("| sampler | correction | cosine with the on-policy update | mean expected reward over the run | at the end "
          "| KL(sampler || policy) |\n|---|---|---|---|---|---|")
    for (mismatch, correction), results in runs.items():
        kl = statistics.fmean(r["mismatch_kl"] for r in results)
        cos = "1 (itself)" if mismatch == "on_policy" else "{:.4f} +- {:.4f}".format(*cosine[(mismatch, correction)])
        print(f"| {mismatch} | {correction} | {cos} | {auc[(mismatch, correction)][0]:.4f} +- "
              f"{auc[(mismatch, correction)][1]:.4f} | {final[(mismatch, correction)][0]:.4f} | {kl:.4f} |")
    print(f"(mean +- std over {args.seeds} seeds; best achievable reward "
          f"{statistics.fmean(r['best'] for r in runs[('on_policy', 'none')]):.4f})\n")
    rows = []
    for mismatch in ("noisy", "stale"):
        (tis, s_tis), (none, s_none) = cosine[(mismatch, "tis")], cosine[(mismatch, "none")]
        rows.append({"claim": f"{mismatch} sampler: TIS's expected update is closer to on-policy than no correction's",
                     "our figure": f"cosine {tis:.4f} vs {none:.4f}, {args.seeds} seeds",
                     "verdict": grade(tis, none, seed_se(s_tis, args.seeds), seed_se(s_none, args.seeds))})
        (tis, s_tis), (none, s_none) = auc[(mismatch, "tis")], auc[(mismatch, "none")]
        rows.append({"claim": f"{mismatch} sampler: TIS learns faster than no correction (mean reward over the run)",
                     "our figure": f"{tis:.4f} vs {none:.4f} (on-policy {auc[('on_policy', 'none')][0]:.4f}), "
                                   f"{args.seeds} seeds",
                     "verdict": grade(tis, none, seed_se(s_tis, args.seeds), seed_se(s_none, args.seeds))})
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for axis, mismatch in zip(axes, ("noisy", "stale")):
        for key in (("on_policy", "none"), *((mismatch, c) for c in CORRECTIONS)):
            curve = torch.tensor([r["curve"] for r in runs[key]]).mean(0)
            axis.plot(curve, label=f"{key[0]} / {key[1]}" if key[0] == "on_policy" else key[1])
        axis.set_title(f"{mismatch} sampler")
        axis.set_xlabel("step")
        axis.legend()
    axes[0].set_ylabel("expected reward (exact)")
    save_figure(figure, args.output_dir, "sampler_mismatch.png")


if __name__ == "__main__":
    main()
