"""LegoGCD's local entropy regularization (Cao et al., "Solving the Catastrophic Forgetting Problem
in Generalized Category Discovery", CVPR 2024) on top of a SimGCD-style learner. Claim graded: LER
raises the accuracy on the known ("old") classes without lowering it on the new ones (the paper's
claim on its benchmarks; its table numbers not read here).

Digits (scikit-learn): classes 0-4 known (half of their training images labelled), 5-9 new (all
unlabelled). Model: MLP encoder 64-128-64, L2-normalized features, 10 weight-normalized prototypes,
logits = cosine / 0.1. SimGCD-style loss: 0.35 * supervised CE + 0.65 * (self-distillation between
two noisy views, teacher sharpened at temperature 0.05 and detached, minus 2 * the entropy of the
mean prediction); LegoGCD adds LER (weight 2, threshold 0.7, tau_o 0.05, EMA prior 0.999). 1000
Adam steps of 128 images; test accuracy with one Hungarian matching of clusters to classes over
all test images, reported on old and new classes; 5 seeds.

    .venv/bin/python experiments/legogcd_digits.py      # about a minute; outputs/experiments/legogcd_digits.png
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from _verdict import experiment_parser, grade, mean_std, print_rows, pyplot, save_figure, seed_se

from divreg.regularizers import LocalEntropyRegularizer


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
        self.prototypes = torch.nn.Parameter(torch.randn(10, 64))

    def forward(self, x):  # cosine similarities (B, 10)
        return F.normalize(self.encoder(x), dim=1) @ F.normalize(self.prototypes, dim=1).T


def view(x, generator):
    keep = (torch.rand(x.shape, generator=generator) > 0.1).float()
    return x * keep + 0.1 * torch.randn(x.shape, generator=generator)


def hungarian_accuracy(predicted, labels):
    from scipy.optimize import linear_sum_assignment

    counts = np.zeros((10, 10))
    for p, t in zip(predicted.tolist(), labels.tolist()):
        counts[p, t] += 1
    rows, cols = linear_sum_assignment(-counts)
    mapping = dict(zip(rows, cols))
    mapped = torch.tensor([mapping[p] for p in predicted.tolist()])
    correct = mapped == labels
    return float(correct[labels < 5].float().mean()), float(correct[labels >= 5].float().mean())


def run(seed: int, steps: int, lego: bool) -> tuple[float, float]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1300], order[1300:]
    labelled = torch.zeros(len(x), dtype=torch.bool)
    known = train[y[train] < 5]
    labelled[known[: len(known) // 2]] = True
    torch.manual_seed(seed)
    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ler = LocalEntropyRegularizer(10, 5, weight=2.0)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = train[torch.randint(0, len(train), (128,), generator=generator)]
        first, second = model(view(x[batch], generator)) / 0.1, model(view(x[batch], generator)) / 0.1
        mask = labelled[batch]
        supervised = F.cross_entropy(first[mask], y[batch][mask]) if mask.any() else first.sum() * 0
        teacher = torch.softmax(second.detach() * 0.1 / 0.05, dim=1)
        distill = -(teacher * F.log_softmax(first, dim=1)).sum(1).mean()
        mean_prediction = torch.softmax(first, dim=1).mean(0)
        entropy = -(mean_prediction * mean_prediction.clamp_min(1e-12).log()).sum()
        loss = 0.35 * supervised + 0.65 * (distill - 2.0 * entropy)
        if lego:
            loss = loss + ler(first * 0.1, ~mask, step=step)  # LER on the cosine logits
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = model(x[test]).argmax(1)
    return hungarian_accuracy(predicted, y[test])


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    results = {name: [run(seed, args.steps, name == "LegoGCD") for seed in range(args.seeds)]
               for name in ("SimGCD-style", "LegoGCD")}
    summary = {name: {"old": mean_std([r[0] for r in runs]),
                      "new": mean_std([r[1] for r in runs])}
               for name, runs in results.items()}
    print(f"{args.seeds} seeds, {args.steps} steps, {time.perf_counter() - started:.0f} s\n")
    print("| method | old classes (0-4) | new classes (5-9) |\n|---|---|---|")
    for name, values in summary.items():
        print(f"| {name} | " + " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in values.values()) + " |")

    def verdict(key):
        (a, sa), (b, sb) = summary["LegoGCD"][key], summary["SimGCD-style"][key]
        return grade(a, b, seed_se(sa, args.seeds), seed_se(sb, args.seeds))

    new_verdict = verdict("new")
    rows = [{"claim": "LER raises old-class accuracy", "our figure": f"{summary['LegoGCD']['old'][0]:.3f} vs "
             f"{summary['SimGCD-style']['old'][0]:.3f}", "verdict": verdict("old")},
            {"claim": "LER does not lower new-class accuracy (a drop = did not hold)",
             "our figure": f"{summary['LegoGCD']['new'][0]:.3f} vs {summary['SimGCD-style']['new'][0]:.3f}",
             "verdict": "did not hold" if new_verdict == "did not hold" else "held"}]
    print()
    print_rows(rows)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for offset, name in ((-0.2, "SimGCD-style"), (0.2, "LegoGCD")):
        axis.bar(np.arange(2) + offset, [summary[name][k][0] for k in ("old", "new")], width=0.4, label=name,
                 yerr=[seed_se(summary[name][k][1], args.seeds) for k in ("old", "new")], capsize=4)
    axis.set_xticks(range(2), ["old (0-4)", "new (5-9)"])
    axis.set_ylabel("test accuracy (Hungarian)")
    axis.legend(fontsize=8)
    save_figure(figure, args.output_dir, "legogcd_digits.png")


if __name__ == "__main__":
    main()
