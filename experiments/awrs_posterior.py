"""How far each controlled-generation method samples from the global constrained posterior, on toys
small enough to enumerate (Lipkin et al., "Fast Controlled Generation from Language Models with
Adaptive Weighted Rejection Sampling", 2025, arXiv 2504.05410; official code genlm-control).

Toys: random bigram LMs over 8 tokens (token 7 is EOS; logits 1.5 N(0, 1), one LM per seed),
outputs of at most 4 tokens, and a prefix constraint with dead ends (tokens non-decreasing, never
6 twice in a row; complete when at least 2 tokens sum to a multiple of 3). For each toy:

- the exact posterior pi(y) = p(y EOS) c(y) / Z by enumeration;
- locally constrained decoding (token masking), exact: total variation (TV) to pi (failures,
  where decoding reaches a dead end, count as an outcome of their own), its failure rate, and
  KL(q given success || pi);
- importance sampling with masking proposals and N particles (SMC without resampling), exact by
  the one-dimensional integral in ``divreg.generation._exact``: TV and KL(P_N || pi);
- AWRS-SMC (recursive estimator, resampling at ESS < N/2): the averaged weighted-particle
  distribution of ``--runs`` runs (Monte Carlo; its noise adds to the TV: the split-half TV of two
  independent halves, divided by 2, is printed as the noise level);
- rejection sampling of whole sequences: exact samples; its cost (sequences drawn per sample).

Claims graded (means over toys, standard errors over toys, ``_verdict.grade``): AWRS-SMC with N
particles is closer to pi than locally constrained decoding; its TV decreases from N = 4 to 64.

    .venv/bin/python experiments/awrs_posterior.py    # about 3 minutes; outputs/experiments/awrs_posterior.png
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _verdict import experiment_parser, grade, mean_std, print_rows, pyplot, save_figure, seed_se

from divreg.generation import (BigramLM, Predicate, distribution_kl, exact_importance_resampling,
                               exact_locally_constrained, exact_posterior, given_success, rejection_sampling, smc,
                               outcome_total_variation)

EOS, MAX_TOKENS = 7, 4
PARTICLES = (1, 4, 16, 64)


def _prefix(ids):
    return all(a <= b for a, b in zip(ids, ids[1:])) and not (len(ids) >= 2 and ids[-1] == ids[-2] == 6)


def _complete(ids):
    return len(ids) >= 2 and sum(ids) % 3 == 0 and _prefix(ids)


CONSTRAINT = Predicate(_prefix, _complete, eos_token_id=EOS)


def _smc_distribution(lm, n, runs, generator):
    """Two independent halves of the averaged weighted-particle distribution, with failure rates."""
    halves = [({}, [0]), ({}, [0])]
    calls = tokens = 0
    for run in range(runs):
        result = smc(lm, CONSTRAINT, n, max_tokens=MAX_TOKENS, generator=generator)
        calls, tokens = calls + result.constraint_calls, tokens + result.tokens
        totals, dead = halves[run % 2]
        distribution = result.distribution()
        dead[0] += not distribution
        for y, weight in distribution.items():
            totals[y] = totals.get(y, 0.0) + weight
    size = [len(range(h, runs, 2)) for h in (0, 1)]
    parts = [({y: v / size[h] for y, v in halves[h][0].items()}, halves[h][1][0] / size[h]) for h in (0, 1)]
    keys = set(parts[0][0]) | set(parts[1][0])
    merged = {y: (parts[0][0].get(y, 0.0) * size[0] + parts[1][0].get(y, 0.0) * size[1]) / runs for y in keys}
    failure = (parts[0][1] * size[0] + parts[1][1] * size[1]) / runs
    return merged, failure, parts, calls / max(tokens, 1)


def toy(seed: int, runs: int) -> dict:
    lm = BigramLM.random(8, EOS, torch.Generator().manual_seed(seed))
    pi, _ = exact_posterior(lm, CONSTRAINT, MAX_TOKENS)
    q, failure = exact_locally_constrained(lm, CONSTRAINT, MAX_TOKENS)
    out = {"lcd_tv": outcome_total_variation(pi, q, 0.0, failure), "lcd_failure": failure,
           "lcd_kl": distribution_kl(given_success(q, failure), pi)}
    generator = torch.Generator().manual_seed(1000 + seed)
    for n in PARTICLES:
        exact_n, fail_n = exact_importance_resampling(pi, q, failure, n)
        out[f"is_tv_{n}"] = outcome_total_variation(pi, exact_n, 0.0, fail_n)
        out[f"is_kl_{n}"] = distribution_kl(given_success(exact_n, fail_n), pi)
        merged, fail, parts, calls = _smc_distribution(lm, n, runs, generator)
        out[f"awrs_tv_{n}"] = outcome_total_variation(pi, merged, 0.0, fail)
        out[f"awrs_noise_{n}"] = outcome_total_variation(parts[0][0], parts[1][0], parts[0][1], parts[1][1]) / 2
        out[f"awrs_calls_{n}"] = calls
    rejection = rejection_sampling(lm, CONSTRAINT, runs, max_tokens=MAX_TOKENS, generator=generator)
    samples = {}
    for y in rejection.samples:
        samples[y] = samples.get(y, 0.0) + 1 / len(rejection.samples)
    out["rejection_tv"] = outcome_total_variation(pi, samples)
    out["rejection_cost"] = rejection.attempts / len(rejection.samples)
    return out


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--toys", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300, help="SMC runs (and rejection samples) per toy and N")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = [toy(seed, args.runs) for seed in range(args.toys)]

    def stat(key):
        values = np.array([r[key] for r in results])
        return mean_std(values)

    print(f"{args.toys} toys, {args.runs} runs per N, {time.perf_counter() - started:.0f} s\n")
    (tv, tv_sd), (fail, fail_sd), (kl, kl_sd) = stat("lcd_tv"), stat("lcd_failure"), stat("lcd_kl")
    print(f"locally constrained decoding (exact): TV {tv:.3f} +- {tv_sd:.3f}, failure rate {fail:.3f} +- "
          f"{fail_sd:.3f}, KL(q | success || pi) {kl:.3f} +- {kl_sd:.3f}")
    cost, cost_sd = stat("rejection_cost")
    rtv, rtv_sd = stat("rejection_tv")
    print(f"rejection sampling: {cost:.1f} +- {cost_sd:.1f} sequences drawn per sample; TV of {args.runs} exact "
          f"samples {rtv:.3f} +- {rtv_sd:.3f} (sampling noise only)\n")
    print("| N | masking IS: TV (exact) | masking IS: KL (exact) | AWRS-SMC: TV (Monte Carlo) | noise level | "
          "AWRS constraint calls / token |\n|---|---|---|---|---|---|")
    for n in PARTICLES:
        cells = [stat(f"is_tv_{n}"), stat(f"is_kl_{n}"), stat(f"awrs_tv_{n}"), stat(f"awrs_noise_{n}"),
                 stat(f"awrs_calls_{n}")]
        print(f"| {n} | " + " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in cells) + " |")
    print("(masking: 8 constraint calls per token, one per vocabulary token)\n")
    rows = []
    for n in (16, 64):
        awrs_tv, awrs_sd = stat(f"awrs_tv_{n}")
        rows.append({"claim": f"AWRS-SMC ({n} particles) closer to the posterior than locally constrained decoding",
                     "our figure": f"TV {awrs_tv:.3f} vs {tv:.3f}",
                     "verdict": grade(awrs_tv, tv, seed_se(awrs_sd, args.toys), seed_se(tv_sd, args.toys),
                                      higher_is_better=False)})
    (tv4, sd4), (tv64, sd64) = stat("awrs_tv_4"), stat("awrs_tv_64")
    rows.append({"claim": "AWRS-SMC's TV to the posterior falls as particles grow (64 vs 4)",
                 "our figure": f"TV {tv64:.3f} vs {tv4:.3f}",
                 "verdict": grade(tv64, tv4, seed_se(sd64, args.toys), seed_se(sd4, args.toys),
                                  higher_is_better=False)})
    print_rows(rows)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(PARTICLES, [stat(f"is_tv_{n}")[0] for n in PARTICLES], "o-", label="masking IS (exact)")
    axis.errorbar(PARTICLES, [stat(f"awrs_tv_{n}")[0] for n in PARTICLES],
                  yerr=[seed_se(stat(f"awrs_tv_{n}")[1], args.toys) for n in PARTICLES], fmt="s-",
                  label="AWRS-SMC (Monte Carlo)")
    axis.plot(PARTICLES, [stat(f"awrs_noise_{n}")[0] for n in PARTICLES], ":", color="grey", label="noise level")
    axis.axhline(tv, color="red", linestyle="--", label="locally constrained decoding")
    axis.axhline(rtv, color="green", linestyle="-.", label=f"rejection, {args.runs} samples")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("particles N")
    axis.set_ylabel("total variation to the posterior")
    axis.legend()
    save_figure(figure, args.output_dir, "awrs_posterior.png")
    print("\nplot: outputs/experiments/awrs_posterior.png")


if __name__ == "__main__":
    main()
