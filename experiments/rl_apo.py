"""APO's DADS (Hong et al. 2025, arXiv 2506.21655; code Indolent-Kawhi/View-R1) on a tabular
multi-prompt task: weighting each completion's KL term by its prompt's difficulty loosens the KL
on hard prompts, so the policy moves further from the reference there (the per-difficulty KL).

Eight prompts, each a categorical policy over 8 answers with one right answer; the reference (the
starting policy) gives the right answer probability 0.6 on four easy prompts and 0.1 on four hard
ones. GRPO with the library's GRPOLoss on sampled groups (8 prompts x 8 completions per step,
group-normalized advantages, k3 KL to the reference in the loss, Adam 0.05, 150 steps), with and
without DADS's weights (`divreg.losses.dads_kl_weights`, e = Euler's number), at beta 0.1 and 1
(not APO's 1e-3, at which the KL barely acts in 150 steps). On the easy prompts DADS is expected
to change little (the claim is about hard prompts). Measured exactly from the tables:
KL(pi || ref) per prompt and the probability of the right answer, averaged per difficulty.

STCR is not tested here: with the official b = 1.00001 its factor is below 1 + 1e-4 for answers
shorter than 10 tokens, so a short-answer toy cannot show it.

    .venv/bin/python experiments/rl_apo.py      # about a minute
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from _verdict import grade, print_rows, seed_se
from divreg.losses import GRPOLoss, dads_kl_weights, group_advantages

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 1.0])
    args = parser.parse_args()
    hard = [p for p in range(PROMPTS) if p not in EASY]
    rows = []
    for beta in args.betas:
        summary = {}
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
                         "our figure": f"{statistics.fmean(a):.4f} ± {statistics.stdev(a):.4f} vs "
                                       f"{statistics.fmean(b):.4f} ± {statistics.stdev(b):.4f} ({args.seeds} seeds)",
                         "verdict": grade(statistics.fmean(a), statistics.fmean(b),
                                          seed_se(statistics.stdev(a), args.seeds),
                                          seed_se(statistics.stdev(b), args.seeds))})
    print_rows(rows)


if __name__ == "__main__":
    main()
