"""MAID, adaptively inexact bilevel learning (Salehi et al., arXiv 2308.10098), on the official
code's quadratic problem (smaller; Gaussian matrices): upper level g(x) = 0.5 ||A1 x - b1||^2, lower
level h(x, theta) = 0.5 ||A2 x + A3 theta - b2||^2, A_i 100 x 5, a closed-form optimum. Claim
graded: MAID reaches a given suboptimality with fewer lower-level plus conjugate-gradient
iterations than the same method at fixed accuracies eps = delta in {1e-1, 1e-3, 1e-5} (the
paper's figures of suboptimality against total work).

Measured per run: the work (lower-level gradient steps + CG iterations) until the relative
suboptimality (f(theta) - f*) / (f(theta_0) - f*) first falls below 1e-4 (the budget, 15,000, if
never), 5 seeds.

    .venv/bin/python experiments/maid_quadratic.py      # about 3 minutes; outputs/experiments/maid_quadratic.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _verdict import grade, print_rows, pyplot, save_figure, seed_se

from divreg.regularizers import MAID

VARIANTS = [("MAID", True, 0.1), ("fixed 1e-1", False, 1e-1), ("fixed 1e-3", False, 1e-3), ("fixed 1e-5", False, 1e-5)]


def problem(seed: int, n: int = 100, m: int = 5):
    generator = torch.Generator().manual_seed(seed)
    a1, a2, a3 = (torch.randn(n, m, dtype=torch.float64, generator=generator) for _ in range(3))
    b1, b2 = torch.randn(n, dtype=torch.float64, generator=generator), torch.randn(n, dtype=torch.float64, generator=generator)
    solve = torch.linalg.solve(a2.T @ a2, a2.T)
    k = a1 @ solve @ a3
    value = lambda t: float(0.5 * (a1 @ solve @ (b2 - a3 @ t) - b1).pow(2).sum())  # noqa: E731
    optimum = torch.linalg.lstsq(k, a1 @ solve @ b2 - b1).solution
    eig = torch.linalg.eigvalsh(a2.T @ a2)
    constants = dict(mu=float(eig[0]), lipschitz=float(eig[-1]), upper_lipschitz=float(torch.linalg.eigvalsh(a1.T @ a1)[-1]))
    return (lambda x, t: 0.5 * (a2 @ x + a3 @ t - b2).pow(2).sum()), (lambda x: 0.5 * (a1 @ x - b1).pow(2).sum()), \
        constants, value, value(optimum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=15000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    work, curves = {name: [] for name, _, _ in VARIANTS}, {name: [] for name, _, _ in VARIANTS}
    for seed in range(args.seeds):
        lower, upper, constants, value, best = problem(seed)
        theta0 = torch.ones(5, dtype=torch.float64)
        start_gap = value(theta0) - best
        for name, adaptive, accuracy in VARIANTS:
            state = MAID(lower, upper, eps=accuracy, delta=accuracy, adaptive=adaptive, **constants).run(
                torch.zeros(5, dtype=torch.float64), theta0, budget=args.budget)
            curve = [(spent, (value(theta) - best) / start_gap) for spent, theta in state.history]
            curves[name].append(curve)
            work[name].append(next((spent for spent, gap in curve if gap < 1e-4), args.budget))
    print(f"{args.seeds} seeds, budget {args.budget}, {time.perf_counter() - started:.0f} s\n")
    print("| method | work to 1e-4 relative suboptimality | final relative suboptimality (seed 0) |\n|---|---|---|")
    for name in work:
        print(f"| {name} | {np.mean(work[name]):.0f} +- {np.std(work[name]):.0f} | {curves[name][0][-1][1]:.2e} |")
    rows = [{"claim": f"MAID needs less work than {name}", "our figure": f"{np.mean(work['MAID']):.0f} vs "
             f"{np.mean(work[name]):.0f}" + (" (budget: never reached)" if min(work[name]) == args.budget else ""),
             "verdict": grade(float(np.mean(work["MAID"])), float(np.mean(work[name])),
                              seed_se(float(np.std(work["MAID"])), args.seeds),
                              seed_se(float(np.std(work[name])), args.seeds), higher_is_better=False)}
            for name in work if name != "MAID"]
    print()
    print_rows(rows)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for name in curves:
        spent, gaps = zip(*curves[name][0])
        axis.semilogy(spent, np.maximum(gaps, 1e-16), label=name)
    axis.set_xlabel("lower-level + CG iterations")
    axis.set_ylabel("relative suboptimality (seed 0)")
    axis.legend(fontsize=8)
    save_figure(figure, "outputs/experiments", "maid_quadratic.png")


if __name__ == "__main__":
    main()
