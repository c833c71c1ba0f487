"""Easy-to-hard curricula for RL (difficulty labels as Easy2Hard-Bench makes them: Ding et al.,
NeurIPS 2024 Datasets and Benchmarks, arXiv 2409.18433), on `divreg rl` with additions of mixed
size: a third each with operands of 1, 2 and 3 digits (difficulty = digits), the same warm-up,
then GRPO with ``curriculum=uniform`` against ``curriculum=easy_to_hard``. Two questions:

- does the easy-to-hard curriculum reach a higher held-out accuracy, overall and per difficulty
  band? (the curriculum claim that difficulty labels are meant to enable);
- do IRT difficulties fitted to observed correctness (``divreg.data.fit_irt``, Rasch, MAP) recover
  the known ones? Items: the held-out
  problems, each trained policy's greedy answers and ``--samples`` sampled attempts (temperature 1)
  a solver; their rank correlation with the digits.

    .venv/bin/python experiments/rl_curriculum.py      # about 11 minutes; outputs/experiments/rl_curriculum
"""

from __future__ import annotations

import json
import os
import random
import time

import numpy as np
from _verdict import experiment_parser, grade, print_rows, sample_std, seed_se

CURRICULA = ("uniform", "easy_to_hard")


def write_problems(path: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(count):
            digits = 1 + i % 3
            a, b = (rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits) for _ in range(2))
            handle.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b), "completion": str(a + b),
                                     "difficulty": digits}) + "\n")


def evaluate(folder: str, problems: list[dict], samples: int = 0) -> list[np.ndarray]:
    """Rows of 1 where the model in ``folder`` answers right: its greedy answers, then ``samples``
    rows of sampled answers (temperature 1, seeds 0..samples-1), each a solver of the IRT fit."""
    from transformers import AutoModelForCausalLM

    from divreg.models import CausalLM, generate_examples, greedy_completions, load_tokenizer

    tokenizer = load_tokenizer(folder)
    model = CausalLM(AutoModelForCausalLM.from_pretrained(folder), len(tokenizer)).eval()
    prompts = [tokenizer(p["prompt"], add_special_tokens=False)["input_ids"] for p in problems]
    rows = [np.array([a.strip() == p["answer"] for a, p in zip(greedy_completions(model, prompts, tokenizer, 6),
                                                               problems)], dtype=np.float64)]
    for seed in range(samples):
        drawn = generate_examples(model, prompts, tokenizer, 6, seed)
        texts = [tokenizer.decode(e.input_ids[e.prompt_length:], skip_special_tokens=True) for e in drawn]
        rows.append(np.array([t.strip() == p["answer"] for t, p in zip(texts, problems)], dtype=np.float64))
    return rows


def main() -> None:
    parser = experiment_parser(__doc__, output_dir="outputs/experiments/rl_curriculum")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=8, help="sampled attempts per policy, for the IRT fit")
    args = parser.parse_args()
    from divreg.config import load_config
    from divreg.data import fit_irt
    from divreg.recipes.rl import RLConfig, run

    started = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    train, held_out = os.path.join(args.output_dir, "train.jsonl"), os.path.join(args.output_dir, "held_out.jsonl")
    write_problems(train, 3000, 0)
    write_problems(held_out, 300, 1)
    problems = [json.loads(line) for line in open(held_out)]
    band = np.array([p["difficulty"] for p in problems])
    correct: dict = {}
    solvers: list = []  # every policy's greedy and sampled attempts: the IRT fit's solvers
    for curriculum in CURRICULA:
        out = os.path.join(args.output_dir, curriculum)
        run(load_config(RLConfig, None, [
            f"data={train}", f"held_out={held_out}", "tokenizer=builtin", "rewards={exact_match: 1.0, format: 0.1}",
            f"curriculum={curriculum}", f"steps={args.steps}", "max_new_tokens=6", "warmup_steps=3000",
            "warmup_target=0.3", f"seeds={list(range(args.seeds))}", f"output_dir={out}", "overwrite=true",
            "eval_every=50"]))
        attempts = [evaluate(os.path.join(out, "models", f"grpo-seed{s}"), problems, args.samples)
                    for s in range(args.seeds)]
        correct[curriculum] = [rows[0] for rows in attempts]  # greedy: the accuracy
        solvers.extend(row for rows in attempts for row in rows)
    print(f"{args.seeds} seeds, {args.steps} GRPO steps, {time.perf_counter() - started:.0f} s\n")
    print("| policy | overall | 1 digit | 2 digits | 3 digits |\n|---|---|---|---|---|")
    for name, runs in correct.items():
        if not runs:
            continue
        cells = [np.array([r.mean() for r in runs])] + [np.array([r[band == d].mean() for r in runs]) for d in (1, 2, 3)]
        print(f"| {name} | " + " | ".join(f"{c.mean():.3f} ± {sample_std(c):.3f}" for c in cells) + " |")
    rows = []
    for label, mask in (("overall", band > 0), ("3 digits", band == 3)):
        a = np.array([r[mask].mean() for r in correct["easy_to_hard"]])
        b = np.array([r[mask].mean() for r in correct["uniform"]])
        rows.append({"claim": f"easy-to-hard beats uniform ({label} accuracy)",
                     "our figure": f"{a.mean():.3f} vs {b.mean():.3f}",
                     "verdict": grade(float(a.mean()), float(b.mean()), seed_se(sample_std(a), args.seeds),
                                      seed_se(sample_std(b), args.seeds))})
    matrix = np.stack(solvers)  # (solvers, items)
    fit = fit_irt(matrix)
    from scipy.stats import spearmanr

    rho = spearmanr(fit.difficulty, band).statistic
    print(f"\nIRT (Rasch, MAP) on {matrix.shape[0]} solvers x {matrix.shape[1]} held-out problems: Spearman "
          f"correlation of the fitted difficulty with the digits {rho:.3f}; mean fitted difficulty by digits "
          + ", ".join(f"{d}: {fit.difficulty[band == d].mean():+.2f}" for d in (1, 2, 3)))
    print()
    print_rows(rows)


if __name__ == "__main__":
    main()
