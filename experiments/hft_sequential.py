"""Half Fine-Tuning (Hui et al. 2024, arXiv 2404.18466) against full fine-tuning on tasks learned
one after the other by a tiny Llama: three generated sequence tasks over the letters a-h (copy a
string, reverse it, shift each letter by one), each example marked by its task's token. Stage 1
trains the first task with every parameter; stages 2 and 3 train the next task either fully or
with HFT (a new random half frozen at each stage, `divreg.regularizers.apply_half_fine_tuning`).
Claims graded: HFT forgets the earlier tasks less (backward transfer: the mean over tasks 1 and 2
of the accuracy after stage 3 minus the accuracy right after the task's own stage) and keeps the
last task's accuracy (the paper: comparable or better performance on the new task).

Accuracy: the answer tokens predicted right from the true prefix (teacher-forced), on 200
held-out prompts per task (chance: 1/8). Stage 1 trains ``--first-steps``, the later stages
``--steps`` (a fine-tuning stage shorter than the first).

    .venv/bin/python experiments/hft_sequential.py      # about 4 minutes (5 seeds); outputs/experiments/hft_sequential.png
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _verdict import experiment_parser, grade, print_rows, pyplot, sample_std, save_figure, seed_se

from divreg.regularizers import apply_half_fine_tuning

LETTERS = "abcdefgh"
TASKS = ("copy", "reverse", "shift")
VOCAB = ["<pad>", "<sep>"] + [f"<{task}>" for task in TASKS] + list(LETTERS)
ID = {token: i for i, token in enumerate(VOCAB)}
LENGTH = 6


def answer(task: str, letters: str) -> str:
    if task == "copy":
        return letters
    if task == "reverse":
        return letters[::-1]
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in letters)


def batch(task: str, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids (size, 2L+2), labels with the prompt masked)."""
    rows, labels = [], []
    for _ in range(size):
        letters = "".join(rng.choice(list(LETTERS), LENGTH))
        ids = [ID[f"<{task}>"]] + [ID[c] for c in letters] + [ID["<sep>"]] + [ID[c] for c in answer(task, letters)]
        rows.append(ids)
        labels.append([-100] * (LENGTH + 2) + ids[LENGTH + 2:])
    return torch.tensor(rows), torch.tensor(labels)


def model_of(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=32,
                                        pad_token_id=0))


@torch.no_grad()
def accuracy(model, task: str, rng_seed: int) -> float:
    """Teacher-forced accuracy of the answer's tokens (each predicted from the true prefix)."""
    ids, labels = batch(task, 200, np.random.default_rng(10_000 + rng_seed))
    model.eval()
    predicted = model(ids).logits[:, :-1].argmax(-1)
    model.train()
    target, mask = labels[:, 1:], labels[:, 1:] != -100
    return float((predicted == target)[mask].float().mean())


def train(model, task: str, steps: int, lr: float, rng: np.random.Generator) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        ids, labels = batch(task, 32, rng)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def run(seed: int, method: str, first_steps: int, steps: int, lr: float) -> np.ndarray:
    """(3 stages, 3 tasks) accuracy after each stage."""
    model, rng = model_of(seed), np.random.default_rng(seed)
    table = np.zeros((3, 3))
    for stage, task in enumerate(TASKS):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if method == "HFT" and stage > 0:
            apply_half_fine_tuning(model, seed=1000 * seed + stage)  # a new half each stage
        train(model, task, first_steps if stage == 0 else steps, lr, rng)
        table[stage] = [accuracy(model, t, seed) for t in TASKS]
    return table


def main() -> None:
    parser = experiment_parser(__doc__, output_dir="outputs/experiments")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-steps", type=int, default=600, help="optimizer steps of stage 1")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of stages 2 and 3")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    tables = {method: [run(seed, method, args.first_steps, args.steps, args.lr) for seed in range(args.seeds)]
              for method in ("full", "HFT")}
    print(f"{args.seeds} seeds, {args.first_steps} then {args.steps} steps per stage, "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| method | after stage | copy | reverse | shift |\n|---|---|---|---|---|")
    summary = {}
    for method, runs in tables.items():
        stacked = np.stack(runs)  # (seeds, stage, task)
        for stage in range(3):
            cells = [f"{stacked[:, stage, t].mean():.3f} ± {sample_std(stacked[:, stage, t]):.3f}" for t in range(3)]
            print(f"| {method} | {stage + 1} ({TASKS[stage]}) | " + " | ".join(cells) + " |")
        backward = [np.mean([r[2, t] - r[t, t] for t in (0, 1)]) for r in runs]
        summary[method] = {"backward": backward, "last": [r[2, 2] for r in runs]}
    print()
    for method, values in summary.items():
        print(f"{method}: backward transfer {np.mean(values['backward']):+.3f} ± {sample_std(values['backward']):.3f}, "
              f"last task {np.mean(values['last']):.3f} ± {sample_std(values['last']):.3f}")
    se = {m: {k: seed_se(sample_std(v[k]), args.seeds) for k in v} for m, v in summary.items()}
    rows = [{"claim": "HFT forgets less than full fine-tuning (backward transfer)",
             "our figure": f"{np.mean(summary['HFT']['backward']):+.3f} vs {np.mean(summary['full']['backward']):+.3f}",
             "verdict": grade(float(np.mean(summary["HFT"]["backward"])), float(np.mean(summary["full"]["backward"])),
                              se["HFT"]["backward"], se["full"]["backward"])},
            {"claim": "HFT keeps the new task's accuracy (not below full fine-tuning)",
             "our figure": f"{np.mean(summary['HFT']['last']):.3f} vs {np.mean(summary['full']['last']):.3f}",
             "verdict": grade(float(np.mean(summary["HFT"]["last"])), float(np.mean(summary["full"]["last"])),
                              se["HFT"]["last"], se["full"]["last"])}]
    print()
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for axis, (method, runs) in zip(axes, tables.items()):
        mean = np.mean(np.stack(runs), axis=0)
        for t, task in enumerate(TASKS):
            axis.plot(range(1, 4), mean[:, t], marker="o", label=task)
        axis.set_title(method)
        axis.set_xlabel("after stage")
        axis.set_xticks([1, 2, 3])
    axes[0].set_ylabel("answer token accuracy")
    axes[0].legend()
    save_figure(figure, args.output_dir, "hft_sequential.png")


if __name__ == "__main__":
    main()
