"""HyPO's claims on the built-in preference job (`divreg preference`, its defaults: 2-digit
addition, pairs = the right answer vs a wrong completion of the warm-up model, DPO and HyPO from
the same warm-up model, 300 steps, 3 seeds), against Song et al. 2024 (arXiv 2406.01462):

- DPO's KL to the reference keeps growing during training (the last evaluation vs the first,
  paired per seed);
- HyPO's KL at the end is below DPO's;
- HyPO's held-out exact match (the task's true reward) is not below DPO's (paper: HyPO wins);
- DPO moves more probability mass off the pairs' answers than HyPO (the paper's extrapolation to
  unseen responses; here the mass on completions that are neither the chosen nor the rejected
  answer of a held-out pair).

The KL is the exact sequence KL(pi || ref) per prompt on 20 held-out prompts (enumerated). Grading
rule: experiments/_verdict.py (standard errors over seeds).

    .venv/bin/python experiments/preference_claims.py      # about 6 minutes (runs the job)
    .venv/bin/python experiments/preference_claims.py --from-run outputs/preference   # grade a finished run
"""

from __future__ import annotations

import json
import os
import statistics

from _verdict import experiment_parser, grade, mean_se, print_rows


def main() -> None:
    parser = experiment_parser(__doc__, output_dir="outputs/experiments/preference", from_run=True)
    args = parser.parse_args()
    folder = args.from_run
    if folder is None:
        from divreg.config import load_config
        from divreg.recipes.preference import PreferenceConfig, run

        folder = args.output_dir
        run(load_config(PreferenceConfig, None, [f"output_dir={folder}", "overwrite=true"]))
    with open(os.path.join(folder, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    evaluations: dict[str, list[dict]] = {}
    for record in records:
        if record.get("record") == "evaluation":
            evaluations.setdefault(record["run"], []).append(record)
    seeds = sorted({int(name.rsplit("seed", 1)[1]) for name in evaluations})
    first = {m: [evaluations[f"{m}-seed{s}"][0] for s in seeds] for m in ("dpo", "hypo")}
    last = {m: [evaluations[f"{m}-seed{s}"][-1] for s in seeds] for m in ("dpo", "hypo")}
    rows = []
    growth = [b["kl"] - a["kl"] for a, b in zip(first["dpo"], last["dpo"])]
    mean, se = mean_se(growth)
    rows.append({"claim": "DPO's KL(pi || ref) keeps growing (last evaluation - first, paired per seed)",
                 "our figure": f"{statistics.fmean(a['kl'] for a in first['dpo']):.2f} (step {first['dpo'][0]['step']})"
                               f" -> {statistics.fmean(b['kl'] for b in last['dpo']):.2f} (step "
                               f"{last['dpo'][0]['step']}): {mean:+.2f} +- {se:.2f}",
                 "verdict": grade(mean, 0.0, se, 0.0)})
    for key, name, higher in (("kl", "KL(pi || ref) per prompt", False), ("test_accuracy", "held-out exact match", True),
                              ("held_out_unseen_mass", "mass off the pairs' answers", False)):
        hypo, dpo = mean_se([r[key] for r in last["hypo"]]), mean_se([r[key] for r in last["dpo"]])
        verb = "above" if higher else "below"
        rows.append({"claim": f"HyPO's {name} at the end is {verb} DPO's",
                     "our figure": f"HyPO {hypo[0]:.3f} +- {hypo[1]:.3f} vs DPO {dpo[0]:.3f} +- {dpo[1]:.3f}",
                     "verdict": grade(hypo[0], dpo[0], hypo[1], dpo[1], higher_is_better=higher)})
    warmup = [evaluations[f"warmup-seed{s}"][-1]["test_accuracy"] for s in seeds]
    print(f"{len(seeds)} seeds; warm-up exact match {statistics.fmean(warmup):.3f}; mean +- standard error over seeds\n")
    print_rows(rows)


if __name__ == "__main__":
    main()
