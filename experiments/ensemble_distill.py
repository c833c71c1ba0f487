"""Pre-training under infinite compute (Kim, Kotha, Liang and Hashimoto 2025, arXiv 2509.14786;
official code github.com/marin-community/marin, experiments/data_efficiency) at small scale, with
`divreg distill-lm` only: fixed data (Python's documentation, the built-in text), members trained
on the same data with different initializations and data orders, combined by logit averaging
(`teacher.members`), then distilled into an 8x smaller student.

Per seed: four members (each a `divreg distill-lm` teacher trained here, `teacher_weight_decay`),
their held-out loss alone, in two pairs (K=2) and all four (K=4); then one distill-lm run with
the 4-member ensemble as its teacher and three students of the small default architecture, all at
the same steps: CE on the real text alone; the paper's distillation, CE on real text plus
ensemble-generated text (``sequence_kd: --synthetic``, the ensemble's samples continuing each
example's prompt; the paper samples unconditionally); and token-level forward KL to the ensemble
on the real text (divreg's, not the paper's). Loss: the mean next-token NLL on the held-out split
(log perplexity).

Claims graded: (1) an ensemble of K=4 beats one model at equal data; (2) K=4 beats K=2; (3) the
student distilled on real plus ensemble text beats the same student trained on the real text
alone (the paper: the distilled student keeps 83% of the ensemble's benefit). Also printed: the
share of the ensemble's gain over a single member that each student recovers over the real-only
student, (real-only - student) / (single member - ensemble), as the paper's "retains".

    .venv/bin/python experiments/ensemble_distill.py      # 47 minutes here (3 seeds; the machine busy with other jobs)
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
from _verdict import experiment_parser, grade, mean_se, print_rows, pyplot, save_figure

SYNTHETIC_DEFAULT = 0.5


def _distill(output_dir: str, *overrides: str) -> dict:
    from divreg.config import load_config
    from divreg.recipes.lm_distillation import DistillLMConfig, run

    return run(load_config(DistillLMConfig, None, [f"output_dir={output_dir}", "overwrite=true", *overrides]))


def _held_out_loss(models, folder: str) -> float:
    """Mean held-out next-token NLL of a model or ensemble (the recipe's own evaluation)."""
    from divreg.data import load_text_examples
    from divreg.models import load_tokenizer
    from divreg.recipes.lm_distillation.trainer import evaluate

    tokenizer = load_tokenizer(os.path.join(folder, "tokenizer"))
    _, held_out = load_text_examples("builtin", None, tokenizer, 64, 16)
    return math.log(evaluate(models.eval(), None, held_out, tokenizer.pad_token_id)["perplexity"])


def run_seed(seed: int, args) -> dict:
    from divreg.models import load_ensemble, load_tokenizer

    root = os.path.join(args.output_dir, "ensemble_distill", f"seed{seed}")
    first = os.path.join(root, "member0")
    members = []
    for k in range(4):
        folder = os.path.join(root, f"member{k}")
        _distill(folder, f"data_seed={1000 * seed + k}", f"teacher_train_steps={args.teacher_steps}",
                 f"teacher_weight_decay={args.weight_decay}", "steps=1", "kl_eval=false",
                 "methods=[{name: ce_only, weight: 0.0, ce_weight: 1.0}]",
                 *([] if k == 0 else [f"tokenizer={os.path.join(first, 'tokenizer')}"]))
        members.append(os.path.join(folder, "teacher"))
    tokenizer = load_tokenizer(os.path.join(first, "tokenizer"))
    single = [_held_out_loss(load_ensemble([m], tokenizer), first) for m in members]
    pairs = [_held_out_loss(load_ensemble(members[i:i + 2], tokenizer), first) for i in (0, 2)]
    four = _held_out_loss(load_ensemble(members, tokenizer), first)
    students = _distill(os.path.join(root, "students"), f"tokenizer={os.path.join(first, 'tokenizer')}",
                        f"teacher.members=[{','.join(members)}]", f"steps={args.steps}", f"data_seed={seed}",
                        f"seeds=[{seed}]", f"weight_decay={args.student_weight_decay}", "eval_every=1000",
                        "methods=[{name: real_only, weight: 0.0, ce_weight: 1.0}, "
                        f"{{name: real_plus_ensemble_text, weight: 0.0, ce_weight: 1.0, sequence_kd: {args.synthetic}}}, "
                        "{name: forward_kl_to_ensemble, divergence: forward_kl}]")
    result = {"single": float(np.mean(single)), "K=2": float(np.mean(pairs)), "K=4": four}
    for name in ("real_only", "real_plus_ensemble_text", "forward_kl_to_ensemble"):
        result[name] = math.log(students[name]["perplexity"])
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)
    return result


def main() -> None:
    parser = experiment_parser(__doc__, seeds=3, steps=400)
    parser.add_argument("--teacher-steps", type=int, default=400, help="CE steps of each member")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="the members' AdamW weight decay")
    parser.add_argument("--student-weight-decay", type=float, default=0.0)
    parser.add_argument("--synthetic", type=float, default=SYNTHETIC_DEFAULT,
                        help="the distilled student's probability per step of ensemble-generated text")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    runs = [run_seed(seed, args) for seed in range(args.seeds)]
    print(f"\n{args.seeds} seeds, members {args.teacher_steps} steps (weight decay {args.weight_decay}), students "
          f"{args.steps} steps, {time.perf_counter() - started:.0f} s\n")
    stats = {key: mean_se([r[key] for r in runs]) for key in runs[0]}
    print("| model | held-out loss (nats/token) |\n|---|---|")
    for key, (mean, se) in stats.items():
        print(f"| {key} | {mean:.4f} ± {se:.4f} (s.e.) |")
    gain = stats["single"][0] - stats["K=4"][0]
    for name in ("real_plus_ensemble_text", "forward_kl_to_ensemble"):
        kept = (stats["real_only"][0] - stats[name][0]) / gain if gain > 0 else float("nan")
        print(f"{name}: recovers {kept:.0%} of the ensemble's gain over one member ({gain:.4f} nats)")
    print()

    def row(claim: str, better: str, worse: str) -> dict:
        (b, sb), (w, sw) = stats[better], stats[worse]
        return {"claim": claim, "our figure": f"{b:.4f} vs {w:.4f} nats",
                "verdict": grade(b, w, sb, sw, higher_is_better=False)}

    print_rows([row("an ensemble of 4 beats one model at equal data (held-out loss)", "K=4", "single"),
                row("an ensemble of 4 beats an ensemble of 2", "K=4", "K=2"),
                row("the student on real plus ensemble text beats the same student on real text alone",
                    "real_plus_ensemble_text", "real_only")])
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    keys = list(stats)
    axis.bar(range(len(keys)), [stats[k][0] for k in keys], yerr=[2 * stats[k][1] for k in keys], color="tab:blue")
    axis.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=7)
    axis.set_ylabel("held-out loss (nats/token)")
    low = min(stats[k][0] for k in keys)
    axis.set_ylim(low - 0.2, max(stats[k][0] for k in keys) + 0.1)
    save_figure(figure, args.output_dir, "ensemble_distill.png")


if __name__ == "__main__":
    main()
