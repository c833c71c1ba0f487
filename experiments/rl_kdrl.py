"""KDRL (Xu et al. 2025, "Unified Knowledge Distillation and Reinforcement Learning", arXiv
2506.02208) on `divreg rl`'s arithmetic task: GRPO plus a KL to a stronger teacher reaches a given
held-out accuracy in fewer steps than GRPO alone and than the teacher's KL alone (on-policy KD).

1. A teacher: a larger policy (128 hidden, 3 layers) trained by the recipe's supervised warm-up for
   2000 steps (`divreg rl` with that policy and a fixed-length warm-up), saved as a model folder.
2. Three runs of `divreg rl` from the same warm-up (to 0.3 accuracy), seeds 0-2, 200 steps,
   evaluated every 25 steps:
   - ``grpo``: the defaults (k3 KL to the frozen warm-up model, beta 0.04);
   - ``kd``: rewards weighted 0 (zero advantages), k2 KL to the teacher, beta 5e-3 -> 1e-3;
   - ``kdrl``: the task rewards and the same KL to the teacher (configs/rl/kdrl.yaml's values).
3. The first evaluated step at which the held-out accuracy reaches ``--threshold`` (a run that
   never does counts as steps + 25: censored, so its mean is a lower bound), graded over seeds by
   the rule of experiments/_verdict.py, the standard error including the 25-step grid's rounding;
   the final accuracies too.

    .venv/bin/python experiments/rl_kdrl.py      # about 20 minutes on 2 CPU cores; rl_kdrl.png
    .venv/bin/python experiments/rl_kdrl.py --from-run outputs/experiments/rl_kdrl     # grade and plot the finished runs again
"""

from __future__ import annotations

import json
import math
import os
import statistics

import torch

from _verdict import experiment_parser, grade, print_rows, pyplot, sample_std, save_figure, seed_se

TEACHER = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": 256, "max_position_embeddings": 32,
           "tie_word_embeddings": True}


def rl(overrides: list[str]) -> dict:
    from divreg.config import load_config
    from divreg.recipes.rl import RLConfig, run

    return run(load_config(RLConfig, None, ["overwrite=true", *overrides]))


def train_teacher(folder: str, steps: int) -> None:
    """The teacher: the recipe's warm-up of a larger policy, saved with the run's tokenizer."""
    from divreg.data import char_tokenizer
    from divreg.models import CausalLM, ModelSource, build_causal_lm

    run_dir = os.path.join(folder, "teacher_run")
    rl([f"output_dir={run_dir}", "seeds=[0]", f"warmup_steps={steps}", "warmup_target=null", "steps=1",
                  "kl_coef=0", *[f"policy.config.{key}={value}" for key, value in TEACHER.items()
                                 if key != "model_type"]])
    tokenizer = char_tokenizer()
    teacher = CausalLM(build_causal_lm(ModelSource(config=dict(TEACHER)), tokenizer, 0), len(tokenizer))
    state = torch.load(os.path.join(run_dir, "checkpoints", "warmup-seed0.pt"), weights_only=False)["model"]
    teacher.load_state_dict(state)
    teacher.model.save_pretrained(os.path.join(folder, "teacher"))
    tokenizer.save_pretrained(os.path.join(folder, "teacher"))


def main() -> None:
    parser = experiment_parser(__doc__, output_dir="outputs/experiments/rl_kdrl", from_run=True)
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.45)
    args = parser.parse_args()
    if args.from_run:  # grade the finished runs in that folder
        args.output_dir = args.from_run
    teacher = os.path.join(args.output_dir, "teacher")
    kd_terms = [f"reference.path={teacher}", "kl_estimator=k2", "kl_coef=0.005", "kl_coef_decay=0.00005",
                "kl_coef_floor=0.001"]
    runs = {"grpo": [], "kd": [*kd_terms, "rewards.exact_match=0", "rewards.format=0"], "kdrl": kd_terms}
    if not args.from_run:
        train_teacher(args.output_dir, args.teacher_steps)
        for name, overrides in runs.items():
            rl([f"output_dir={os.path.join(args.output_dir, name)}", f"steps={args.steps}", "eval_every=25",
                *overrides])
    with open(os.path.join(args.output_dir, "teacher_run", "metrics.json")) as handle:
        teacher_accuracy = json.load(handle)["seeds"]["0"]["warmup_accuracy"]
    reached, final, curves = {}, {}, {}
    for name in runs:
        folder = os.path.join(args.output_dir, name)
        with open(os.path.join(folder, "metrics.json")) as handle:
            summary = json.load(handle)
        with open(os.path.join(folder, "metrics.jsonl")) as handle:
            records = [r for r in map(json.loads, handle) if r.get("record") == "evaluation"
                       and r["run"].startswith("grpo-")]
        reached[name], final[name], curves[name] = [], [], {}
        for seed, result in summary["seeds"].items():
            curve = [(0, result["warmup_accuracy"])] + [(r["step"], r["test_accuracy"]) for r in records
                                                        if r["run"] == f"grpo-seed{seed}"]
            curves[name][seed] = curve
            reached[name].append(next((step for step, accuracy in curve if accuracy >= args.threshold),
                                      args.steps + 25))
            final[name].append(result["rl_accuracy"])
    seeds = len(reached["kdrl"])

    def mean_std(values):
        return statistics.fmean(values), sample_std(values) if len(values) > 1 else 0.0

    rows = []
    def steps_se(spread: float) -> float:
        """The standard error of a mean step count read on a grid of ``eval_every`` = 25 steps: the
        spread over seeds and the grid's own rounding (a uniform error of variance 25^2 / 12 per
        seed), so that seeds landing on one grid point do not make the error 0."""
        return math.sqrt(seed_se(spread, seeds) ** 2 + 25 ** 2 / 12 / seeds)

    for other in ("grpo", "kd"):
        (a, sa), (b, sb) = mean_std(reached["kdrl"]), mean_std(reached[other])
        rows.append({"claim": f"KDRL reaches {args.threshold} accuracy in fewer steps than {other}",
                     "our figure": f"steps {reached['kdrl']} vs {reached[other]} (mean {a:.0f} vs {b:.0f}; teacher "
                                   f"{teacher_accuracy:.3f})",
                     "verdict": grade(a, b, steps_se(sa), steps_se(sb), higher_is_better=False)})
        (a, sa), (b, sb) = mean_std(final["kdrl"]), mean_std(final[other])
        rows.append({"claim": f"KDRL ends with a higher accuracy than {other}",
                     "our figure": f"{a:.3f} ± {sa:.3f} vs {b:.3f} ± {sb:.3f} after {args.steps} steps",
                     "verdict": grade(a, b, seed_se(sa, seeds), seed_se(sb, seeds))})
    print_rows(rows)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as handle:
        json.dump({"teacher_accuracy": teacher_accuracy, "steps_to_threshold": reached, "final": final}, handle,
                  indent=2)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, color in (("grpo", "tab:blue"), ("kd", "tab:orange"), ("kdrl", "tab:green")):
        for index, curve in enumerate(curves[name].values()):
            axis.plot(*zip(*curve), color=color, alpha=0.7, label=name if index == 0 else None)
    axis.axhline(args.threshold, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("RL step (0: the warm-up model)")
    axis.set_ylabel("held-out exact match")
    axis.set_title(f"KDRL vs GRPO vs on-policy KD (teacher {teacher_accuracy:.2f})")
    axis.legend(fontsize=7)
    save_figure(figure, args.output_dir, "rl_kdrl.png")


if __name__ == "__main__":
    main()
