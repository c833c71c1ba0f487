"""Claims graded on language-model distillation (`divreg distill-lm`). Two settings:

- ``perplexity``: the built-in job (the second half of `make demo`; Python's documentation, one
  run): distilling with forward KL beats training the same student on the labels alone, in
  held-out perplexity and KL to the teacher.
- ``arithmetic`` (configs/distill-lm/arithmetic.yaml, about 12 minutes): students judged by the
  exact match of their greedy answers on 200 held-out 2-digit additions, as GKD (Agarwal et al.
  2024, arXiv 2306.13649) and MiniLLM (Gu et al. 2024, arXiv 2306.08543) judge students by their
  generations: on-policy JSD (GKD, lambda = 1) beats supervised KD with forward KL; reverse KL
  (MiniLLM's objective, here token-level, not its policy-gradient optimizer) beats forward KL;
  forward-KL distillation beats CE on the labels.

Grading rule: experiments/_verdict.py (binomial standard errors on the 200 problems).

    .venv/bin/python experiments/distill_lm_claims.py arithmetic
    .venv/bin/python experiments/distill_lm_claims.py perplexity --from-run outputs/distill_lm
"""

from __future__ import annotations

import json
import os

from _verdict import experiment_parser, grade, print_rows, proportion_se, run_setting, single_run


def main() -> None:
    parser = experiment_parser(__doc__, output_dir=None, from_run=True)  # default: by setting, below
    parser.add_argument("setting", choices=["perplexity", "arithmetic"])
    args = parser.parse_args()
    metrics_path = os.path.join(args.from_run, "metrics.json") if args.from_run else None
    if metrics_path is None:
        from divreg.config import load_config
        from divreg.recipes.lm_distillation import DistillLMConfig, run

        source = "configs/distill-lm/arithmetic.yaml" if args.setting == "arithmetic" else None
        folder = args.output_dir or f"outputs/experiments/distill_lm{'_arithmetic' if source else ''}"
        overrides = ["overwrite=true", f"output_dir={folder}"]
        config = load_config(DistillLMConfig, source, overrides)
        metrics, problems = run(config), config.test_size
    else:
        with open(metrics_path) as handle:
            metrics = json.load(handle)
        metrics = {name: {key: value["mean"] if isinstance(value, dict) else value for key, value in entry.items()}
                   for name, entry in metrics.items() if name != "seeds"}  # several seeds: their means
        problems = run_setting(metrics_path, "test_size")
    rows = []
    if args.setting == "perplexity":
        for metric in ("perplexity", "kl_to_teacher"):
            a, b = metrics["forward_kl"][metric], metrics["ce_only"][metric]
            rows.append({"claim": f"forward-KL distillation beats CE on the labels ({metric})",
                         "our figure": f"forward_kl {a:.3f} vs ce_only {b:.3f}",
                         "verdict": single_run(a, b, higher_is_better=False)})
    else:
        n = problems
        for better, worse, claim in (("on_policy_jsd", "forward_kl", "on-policy JSD (GKD) beats supervised forward KL"),
                                     ("reverse_kl", "forward_kl", "reverse KL (MiniLLM's objective) beats forward KL"),
                                     ("forward_kl", "ce_only", "forward-KL distillation beats CE on the labels")):
            a, b = metrics[better]["exact_match"], metrics[worse]["exact_match"]
            rows.append({"claim": f"{claim} (greedy exact match)",
                         "our figure": f"{better} {a:.3f} vs {worse} {b:.3f} (teacher "
                                       f"{metrics['teacher']['exact_match']:.3f}; {n} problems)",
                         "verdict": grade(a, b, proportion_se(a, n), proportion_se(b, n))})
    print_rows(rows)


if __name__ == "__main__":
    main()
