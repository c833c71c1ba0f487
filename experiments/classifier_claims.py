"""Claims graded on the classifier distillation job (the first half of `make demo`): KD improves
the student's accuracy (Hinton et al. 2015, arXiv 1503.02531); PS-KD lowers ECE and NLL versus CE
(Kim et al. 2021, arXiv 2006.12000); SinKD beats KL, reverse-KL and JS distillation (Cui et al.
2024, arXiv 2402.17110). Setting: the defaults of `divreg distill-classifier` (8x8 digits, a
CNN teacher, small CNN students, 3 seeds). Grading rule: experiments/_verdict.py.

    .venv/bin/python experiments/classifier_claims.py                      # runs the job (about 2 minutes)
    .venv/bin/python experiments/classifier_claims.py --from-run outputs/distill_classifier
"""

from __future__ import annotations

import json
import os

from _verdict import experiment_parser, grade, print_rows, run_setting, seed_se, single_run


def main() -> None:
    parser = experiment_parser(__doc__, output_dir="outputs/experiments/classifier", from_run=True)
    args = parser.parse_args()
    metrics_path = os.path.join(args.from_run, "metrics.json") if args.from_run else None
    if metrics_path is None:
        from divreg.config import load_config
        from divreg.recipes.classifier_distillation import DistillClassifierConfig, run

        config = load_config(DistillClassifierConfig, None, [f"output_dir={args.output_dir}", "overwrite=true"])
        metrics, seeds = run(config), len(config.seeds)
    else:
        with open(metrics_path) as handle:
            metrics = json.load(handle)
        seeds = run_setting(metrics_path, "seeds")

    def compare(claim: str, better: str, worse: str, metric: str, higher_is_better: bool) -> dict:
        a, b = metrics[better][metric], metrics[worse][metric]
        if seeds < 2:  # one seed: no spread (the recipe writes std 0), the direction only
            verdict = single_run(a["mean"], b["mean"], higher_is_better=higher_is_better)
        else:
            verdict = grade(a["mean"], b["mean"], seed_se(a["std"], seeds), seed_se(b["std"], seeds),
                            higher_is_better=higher_is_better)
        figure = f"{better} {a['mean']:.3f} ± {a['std']:.3f} vs {worse} {b['mean']:.3f} ± {b['std']:.3f} ({metric})"
        return {"claim": claim, "our figure": figure, "verdict": verdict}

    rows = [compare("KD improves the student's accuracy over CE", kd, "ce", "accuracy", True)
            for kd in ("kd_forward_kl", "kd_reverse_kl", "kd_jsd")]
    rows += [compare("PS-KD lowers ECE versus CE", "pskd", "ce", "ece", False),
             compare("PS-KD lowers NLL versus CE", "pskd", "ce", "nll", False)]
    rows += [compare("SinKD beats KL / RKL / JS distillation", "sinkd", kd, "accuracy", True)
             for kd in ("kd_forward_kl", "kd_reverse_kl", "kd_jsd")]
    print_rows(rows)


if __name__ == "__main__":
    main()
