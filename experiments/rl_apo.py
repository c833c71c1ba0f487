"""APO's DADS (Hong et al. 2025, arXiv 2506.21655; code Indolent-Kawhi/View-R1) on a tabular
multi-prompt task: weighting each completion's KL term by its prompt's difficulty loosens the KL
on hard prompts, so the policy moves further from the reference there (the per-difficulty KL).

Eight prompts, each a categorical policy over 8 answers with one right answer; the reference (the
starting policy) gives the right answer probability 0.6 on four easy prompts and 0.1 on four hard
ones. GRPO with the library's GRPOLoss on sampled groups (8 prompts x 8 completions per step,
group-normalized advantages, k3 KL to the reference in the loss, Adam 0.05, 150 steps), with and
without DADS's weights (`divreg.rl.dads_kl_weights`, e = Euler's number), at beta 0.1 and 1
(not APO's 1e-3, at which the KL barely acts in 150 steps). On the easy prompts DADS is expected
to change little (the claim is about hard prompts). Measured exactly from the tables:
KL(pi || ref) per prompt and the probability of the right answer, averaged per difficulty.

STCR (a wrong answer longer than the group's correct ones gets its advantage x (1 + p), p = 1 -
b^-(L - mu+), b = 1.00001) is tested on a second tabular task whose responses carry lengths in
tokens without writing them: one prompt, 12 responses, 4 correct (lengths 300-600) and 8 wrong
(lengths 200-4000); the reference gives the right ones 0.1 in all. GRPO without KL, 16 groups of 8
per step, 100 steps, with and without STCR (`divreg.rl.stcr_advantages`); measured exactly
from the table: the mean length of a wrong answer, E[L | wrong], at the end.

    .venv/bin/python experiments/rl_apo.py      # about two minutes; writes outputs/experiments/rl_apo.png
"""

from __future__ import annotations

import statistics

import torch

from _verdict import experiment_parser, grade, print_rows, pyplot, sample_std, save_figure, seed_se
from divreg.losses import GRPOLoss
from divreg.rl import dads_kl_weights, group_advantages

torch.set_default_dtype(torch.float64)
PROMPTS, ANSWERS, GROUP = 8, 8, 8
EASY = [0, 1, 2, 3]


def reference_logits() -> torch.Tensor:
    right = torch.tensor([0.6 if p in EASY else 0.1 for p in range(PROMPTS)])
    probs = ((1 - right) / (ANSWERS - 1))[:, None].expand(PROMPTS, ANSWERS).clone()
    probs[:, 0] = right
    return probs.log()


def train(seed: int, dads: bool, steps: int, beta: float):
    generator = torch.Generator().manual_seed(seed)
    ref = reference_logits()
    logits = ref.clone().requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=0.05)
    loss_fn = GRPOLoss(kl_estimator="k3")
    prompts = torch.arange(PROMPTS).repeat_interleave(GROUP)  # (64,), groups contiguous
    for _ in range(steps):
        with torch.no_grad():
            answers = torch.multinomial(torch.softmax(logits[prompts], -1), 1, generator=generator).squeeze(-1)
            correct = (answers == 0).double()
            advantages = group_advantages(correct, GROUP, "group")
            weights = dads_kl_weights(correct, advantages, GROUP) if dads else None
        logprobs = torch.log_softmax(logits[prompts], -1).gather(-1, answers[:, None])  # (64, 1)
        ref_logprobs = torch.log_softmax(ref[prompts], -1).gather(-1, answers[:, None])
        mask = torch.ones_like(logprobs, dtype=torch.bool)
        out = loss_fn(logprobs, None, advantages, mask, tokens=len(prompts), sequences=len(prompts),
                      ref_logprobs=ref_logprobs, kl_coef=beta, kl_weights=weights)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        pi, log_pi, log_ref = torch.softmax(logits, -1), torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
        kl = (pi * (log_pi - log_ref)).sum(-1)
        return kl, pi[:, 0]


def train_lengths(seed: int, stcr: bool, steps: int, base: float = 1.00001):
    """The STCR task: a categorical over responses with fixed (correct, length)."""
    from divreg.rl import stcr_advantages

    generator = torch.Generator().manual_seed(seed)
    correct = torch.tensor([1.0] * 4 + [0.0] * 8)
    lengths = torch.tensor([300.0, 400.0, 500.0, 600.0, 200.0, 400.0, 800.0, 1200.0, 1800.0, 2500.0, 3200.0, 4000.0])
    start = torch.cat([torch.full((4,), 0.1 / 4), torch.full((8,), 0.9 / 8)]).log()
    logits = start.clone().requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=0.05)
    loss_fn = GRPOLoss()
    groups = 16
    for _ in range(steps):
        with torch.no_grad():
            picks = torch.multinomial(torch.softmax(logits, -1), groups * GROUP, replacement=True, generator=generator)
            advantages = group_advantages(correct[picks], GROUP, "group")
            if stcr:
                advantages = stcr_advantages(advantages, lengths[picks], correct[picks], GROUP, base=base)
        logprobs = torch.log_softmax(logits, -1)[picks][:, None]
        mask = torch.ones_like(logprobs, dtype=torch.bool)
        out = loss_fn(logprobs, None, advantages, mask, tokens=len(picks), sequences=len(picks))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        pi = torch.softmax(logits, -1)
        wrong = pi * (1 - correct)
        return float((wrong * lengths).sum() / wrong.sum()), float((pi * correct).sum())


def _plot(summaries: dict, lengths: dict, folder: str) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(summaries) + 1, figsize=(4.2 * (len(summaries) + 1), 3.6))
    for axis, (beta, summary) in zip(axes, summaries.items()):
        keys = ["kl_easy", "kl_hard"]
        for offset, (dads, label) in enumerate(((False, "GRPO"), (True, "DADS"))):
            means = [statistics.fmean(summary[dads][key]) for key in keys]
            errors = [sample_std(summary[dads][key]) for key in keys]
            axis.bar([i + 0.4 * offset for i in range(len(keys))], means, width=0.4, yerr=errors, label=label)
        axis.set_xticks([0.2, 1.2], ["easy prompts", "hard prompts"])
        axis.set_ylabel("KL(pi || ref) at the end")
        axis.set_title(f"DADS, beta {beta}")
        axis.legend(fontsize=7)
    axis = axes[-1]
    for offset, (stcr, label) in enumerate(((False, "GRPO"), (True, "STCR"))):
        values = [r[0] for r in lengths[stcr]]
        axis.bar([0.4 * offset], [statistics.fmean(values)], width=0.4, yerr=[sample_std(values)], label=label)
    axis.set_xticks([0.2], ["E[L | wrong]"])
    axis.set_title("STCR: mean length of a wrong answer")
    axis.legend(fontsize=7)
    save_figure(figure, folder, "rl_apo.png")


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 1.0])
    args = parser.parse_args()
    hard = [p for p in range(PROMPTS) if p not in EASY]
    rows, summaries = [], {}
    for beta in args.betas:
        summary = summaries[beta] = {}
        for dads in (False, True):
            runs = [train(seed, dads, args.steps, beta) for seed in range(args.seeds)]
            summary[dads] = {name: [float(values[group].mean()) for values in (r[index] for r in runs)]
                             for index, key in ((0, "kl"), (1, "right"))
                             for name, group in ((f"{key}_hard", hard), (f"{key}_easy", EASY))}
        for key, what in (("kl_hard", "KL(pi || ref) on hard prompts"), ("right_hard", "p(right) on hard prompts"),
                          ("kl_easy", "KL(pi || ref) on easy prompts")):
            a, b = summary[True][key], summary[False][key]
            claim = f"DADS gives a higher {what} than GRPO's uniform KL weight (beta {beta})"
            rows.append({"claim": claim,
                         "our figure": f"{statistics.fmean(a):.4f} ± {sample_std(a):.4f} vs "
                                       f"{statistics.fmean(b):.4f} ± {sample_std(b):.4f} ({args.seeds} seeds)",
                         "verdict": grade(statistics.fmean(a), statistics.fmean(b),
                                          seed_se(sample_std(a), args.seeds),
                                          seed_se(sample_std(b), args.seeds))})
    lengths = {stcr: [train_lengths(seed, stcr, 100) for seed in range(args.seeds)] for stcr in (False, True)}
    a, b = [r[0] for r in lengths[True]], [r[0] for r in lengths[False]]
    rows.append({"claim": "STCR shortens wrong answers (lower E[L | wrong] than GRPO)",
                 "our figure": f"{statistics.fmean(a):.1f} ± {sample_std(a):.1f} vs {statistics.fmean(b):.1f} ± "
                               f"{sample_std(b):.1f} tokens; p(right) "
                               f"{statistics.fmean(r[1] for r in lengths[True]):.3f} vs "
                               f"{statistics.fmean(r[1] for r in lengths[False]):.3f} ({args.seeds} seeds)",
                 "verdict": grade(statistics.fmean(a), statistics.fmean(b), seed_se(sample_std(a), args.seeds),
                                  seed_se(sample_std(b), args.seeds), higher_is_better=False)})
    print_rows(rows)
    _plot(summaries, lengths, args.output_dir)


if __name__ == "__main__":
    main()
