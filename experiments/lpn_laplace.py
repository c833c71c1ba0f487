"""Learned proximal networks on the 1-D Laplacian case (Fang, Buchanan & Sulam, ICLR 2024, arXiv
2310.14344): trained on pairs (y = x + noise, x) with x ~ Laplace(0, 1) and noise N(0, 1), the
input-convex network's prox approaches soft-thresholding at 1 (the MAP denoiser, the prox of |x|)
when trained with the proximal matching loss, while the squared loss gives the MMSE denoiser E[x|y]
(computed here by quadrature). Claims graded on y in [-4, 4]: proximal matching is closer to
soft-thresholding than the squared loss is; the squared loss is closer to the MMSE estimate.

Training: psi with 2 hidden layers of 64 (softplus, beta 10), Adam 1e-3, batches of 2000 fresh
pairs; squared loss for 3000 steps; proximal matching after an L1 warm-up of 500 steps, gamma
1.0 / 0.5 / 0.2 / 0.1 for 625 steps each; 3 seeds.

    .venv/bin/python experiments/lpn_laplace.py      # about 2 minutes; outputs/experiments/lpn_laplace.png
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _verdict import experiment_parser, grade, print_rows, pyplot, sample_std, save_figure, seed_se

from divreg.regularizers import InputConvexNetwork, proximal_matching_loss

GRID = torch.linspace(-4, 4, 161)[:, None]


def mmse(y: torch.Tensor) -> torch.Tensor:
    """E[x | y] for x ~ Laplace(0, 1), y = x + N(0, 1), by a fine trapezoid rule."""
    x = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    weights = torch.exp(-x.abs() - 0.5 * (y.double()[:, None] - x) ** 2)  # (G, X)
    return (torch.trapezoid(weights * x, x) / torch.trapezoid(weights, x)).float()


def train(loss_name: str, seed: int, steps: int) -> torch.Tensor:
    torch.manual_seed(seed)
    psi = InputConvexNetwork(1, hidden=64, layers=2)
    optimizer = torch.optim.Adam(psi.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    warmup, stages = steps // 6, [1.0, 0.5, 0.2, 0.1]
    for step in range(steps):
        x = torch.distributions.Laplace(0.0, 1.0).sample((2000, 1))
        y = x + torch.randn(2000, 1, generator=generator)
        estimate = psi.prox(y, create_graph=True)
        if loss_name == "squared":
            loss = (estimate - x).pow(2).sum(-1).mean()
        elif step < warmup:
            loss = (estimate - x).abs().sum(-1).mean()
        else:
            gamma = stages[min(len(stages) - 1, (step - warmup) * len(stages) // (steps - warmup))]
            loss = proximal_matching_loss(estimate, x, gamma).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        psi.clamp()
    return psi.prox(GRID).detach()


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    soft = torch.sign(GRID) * (GRID.abs() - 1).clamp(min=0)
    posterior_mean = mmse(GRID[:, 0])[:, None]
    curves = {name: [train(name, seed, args.steps) for seed in range(args.seeds)] for name in ("squared", "matching")}
    errors = {name: {"to MAP": [float((c - soft).abs().mean()) for c in runs],
                     "to MMSE": [float((c - posterior_mean).abs().mean()) for c in runs]} for name, runs in curves.items()}
    print(f"{args.seeds} seeds, {args.steps} steps, {time.perf_counter() - started:.0f} s\n")
    print("| loss | mean |f(y) - soft-threshold| | mean |f(y) - E[x|y]| |\n|---|---|---|")
    for name, values in errors.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(v):.4f} +- {sample_std(v):.4f}" for v in values.values()) + " |")

    def verdict(better, worse, key):
        b, w = errors[better][key], errors[worse][key]
        return grade(float(np.mean(b)), float(np.mean(w)), seed_se(sample_std(b), args.seeds),
                     seed_se(sample_std(w), args.seeds), higher_is_better=False)

    rows = [{"claim": "proximal matching: closer to the MAP denoiser (soft-thresholding) than the squared loss",
             "our figure": f"{np.mean(errors['matching']['to MAP']):.4f} vs {np.mean(errors['squared']['to MAP']):.4f}",
             "verdict": verdict("matching", "squared", "to MAP")},
            {"claim": "squared loss: closer to the MMSE denoiser than proximal matching",
             "our figure": f"{np.mean(errors['squared']['to MMSE']):.4f} vs {np.mean(errors['matching']['to MMSE']):.4f}",
             "verdict": verdict("squared", "matching", "to MMSE")}]
    print()
    print_rows(rows)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.plot(GRID[:, 0], soft[:, 0], "k--", label="soft-threshold (MAP)")
    axis.plot(GRID[:, 0], posterior_mean[:, 0], "k:", label="E[x|y] (MMSE)")
    axis.plot(GRID[:, 0], curves["matching"][0][:, 0], label="LPN, proximal matching")
    axis.plot(GRID[:, 0], curves["squared"][0][:, 0], label="LPN, squared loss")
    axis.set_xlabel("y")
    axis.set_ylabel("f(y)")
    axis.legend(fontsize=8)
    save_figure(figure, args.output_dir, "lpn_laplace.png")


if __name__ == "__main__":
    main()
