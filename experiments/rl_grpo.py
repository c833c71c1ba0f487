"""Claims graded on `divreg rl` (defaults: 3 seeds, warm-up then GRPO with a k3 KL in the loss):

- GRPO improves the held-out accuracy of the supervised model it starts from (Shao et al. 2024,
  DeepSeekMath, arXiv 2402.03300; the issue's acceptance test): per seed (binomial standard
  errors on the 200 problems) and over seeds (the mean paired gain against its standard error);
- the k3 estimator is unbiased for KL(pi || ref) (Schulman 2020, "Approximating KL
  Divergence"): the mean of (k3 estimate - exact KL) over all logged steps, against its standard
  error over those steps (an equality claim: held when within 2 standard errors of 0).

    .venv/bin/python experiments/rl_grpo.py                  # runs divreg rl (about 4 minutes)
    .venv/bin/python experiments/rl_grpo.py --from-run outputs/rl
"""

from __future__ import annotations

import json
import os
import statistics

from _verdict import experiment_parser, grade, grade_equal, mean_se, print_rows, proportion_se


def main() -> None:
    parser = experiment_parser(__doc__, output_dir="outputs/experiments/rl", from_run=True)
    args = parser.parse_args()
    if args.from_run:  # grade the finished runs in that folder
        args.output_dir = args.from_run
    if not args.from_run:
        from divreg.config import load_config
        from divreg.recipes.rl import RLConfig, run

        run(load_config(RLConfig, None, [f"output_dir={args.output_dir}", "overwrite=true"]))
    with open(os.path.join(args.output_dir, "metrics.json")) as handle:
        summary = json.load(handle)
    with open(os.path.join(args.output_dir, "config.yaml")) as handle:
        n = next(int(line.split(":")[1]) for line in handle if line.startswith("test_size:"))
    rows = []
    gains = []
    for seed, result in summary["seeds"].items():
        before, after = result["warmup_accuracy"], result["rl_accuracy"]
        gains.append(after - before)
        rows.append({"claim": f"GRPO improves held-out accuracy over the warm-up model (seed {seed})",
                     "our figure": f"{before:.3f} -> {after:.3f} ({n} problems)",
                     "verdict": grade(after, before, proportion_se(after, n), proportion_se(before, n))})
    if len(gains) > 1:
        mean, se = mean_se(gains)
        rows.append({"claim": f"GRPO improves held-out accuracy over the warm-up model ({len(gains)} seeds)",
                     "our figure": f"gain {mean:+.3f} ± {se:.3f} (standard error over seeds)",
                     "verdict": grade(mean, 0.0, se, 0.0)})
    with open(os.path.join(args.output_dir, "metrics.jsonl")) as handle:
        steps = [r for r in map(json.loads, handle) if r.get("record") == "step" and "kl_gap" in r]
    # consecutive steps are correlated (the policy drifts slowly): the standard error of the mean gap from
    # the means of blocks of 20 steps of one run (batch means), not from the steps as if independent
    blocks = []
    for name in sorted({r["run"] for r in steps}):
        gaps = [r["kl_gap"] for r in steps if r["run"] == name]
        blocks += [statistics.fmean(gaps[i:i + 20]) for i in range(0, len(gaps) - 19, 20)]
    mean, se = mean_se(blocks)
    exact = statistics.fmean(r["kl_exact"] for r in steps)
    rows.append({"claim": "k3 is an unbiased estimate of KL(pi || ref) per token (no bias detected = held)",
                 "our figure": f"k3 - exact = {mean:+.4f} ± {se:.4f} over {len(steps)} steps ({len(blocks)} blocks of 20; "
                               f"exact KL {exact:.3f})",
                 "verdict": grade_equal(mean, se)})
    print_rows(rows)


if __name__ == "__main__":
    main()
