"""Variational vs TopK sparse autoencoders on toy superposition data (Baker & Li, "Analysis of
Variational Sparse Autoencoders", 2025, arXiv 2509.22994): the paper's negative claim that the
variational TopK SAE has more dead latents and reconstructs worse than the TopK SAE, here over
the KL coefficient (1: the paper's runs; 500: the official code's default) and with the learned
variance head (sampling) or the fixed variance the paper's runs used (no sampling; the KL is then
0.5 mu^2 per latent).

Data: 64 sparse features (each active with probability 0.05, magnitude uniform in [0, 1]) in 16
dimensions along random unit directions, scaled to unit mean-squared norm. SAEs: 64 latents,
k = 4, AuxK (1/32) for both (the paper's vSAE runs had none), 2000 Adam steps of 256 examples,
3 seeds. Measured on 20,000 fresh examples: the fraction of latents that never fire (dead), the
fraction of variance unexplained (FVU) and the mean over true features of the best cosine with a
decoder column (recovery).

    .venv/bin/python experiments/sae_variational.py      # about 5 minutes; outputs/experiments/sae_variational.png
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _verdict import experiment_parser, grade, mean_std, print_rows, pyplot, save_figure, seed_se

from divreg.regularizers import TopKSAE, VariationalSAE, sae_loss

FEATURES, DIM, LATENTS, K = 64, 16, 64, 4


def sampler(seed: int):
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(DIM, FEATURES, generator=generator), dim=0)  # (d, n)

    def draw(count: int) -> torch.Tensor:
        active = torch.rand(count, FEATURES, generator=generator) < 0.05
        return (active * torch.rand(count, FEATURES, generator=generator)) @ directions.T  # (count, d)

    scale = float(draw(20000).pow(2).sum(-1).mean().sqrt())
    return (lambda count: draw(count) / scale), directions


def train(variant: str, coefficient: float, seed: int, steps: int) -> dict:
    draw, directions = sampler(seed)
    torch.manual_seed(seed)
    model = TopKSAE(DIM, LATENTS, K, dead_after=25_600) if variant == "topk" else \
        VariationalSAE(DIM, LATENTS, K, learned_variance=variant == "vsae", dead_after=25_600)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        loss, _ = sae_loss(model, draw(256), step=step, total_steps=steps, kl_coefficient=coefficient)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.renormalize()
    model.eval()
    with torch.no_grad():
        x = draw(20000)
        out = model(x)
        fvu = float((x - out["reconstruction"]).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        dead = float(((out["z"] != 0).sum(0) == 0).float().mean())
        cosines = F.normalize(directions, dim=0).T @ F.normalize(model.decoder, dim=0)  # (n, m)
        recovery = float(cosines.max(dim=1).values.mean())
    return {"dead": dead, "fvu": fvu, "recovery": recovery}


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    settings = [("topk", 0.0)] + [(variant, c) for variant in ("vsae", "vsae-fixed") for c in (0.01, 1.0, 500.0)]
    results = {s: [train(*s, seed, args.steps) for seed in range(args.seeds)] for s in settings}
    summary = {s: {key: mean_std([r[key] for r in runs])
                   for key in runs[0]} for s, runs in results.items()}
    print(f"{args.seeds} seeds, {args.steps} steps, {time.perf_counter() - started:.0f} s\n")
    print("| SAE | KL coefficient | dead latents | FVU | feature recovery |\n|---|---|---|---|---|")
    for (variant, coefficient), values in summary.items():
        print(f"| {variant} | {coefficient if variant != 'topk' else '-'} | "
              + " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in values.values()) + " |")
    rows = []
    base = summary[("topk", 0.0)]
    for variant, coefficient in (("vsae-fixed", 1.0), ("vsae", 1.0), ("vsae", 500.0)):
        mine = summary[(variant, coefficient)]
        for key, label in (("dead", "more dead latents"), ("fvu", "worse reconstruction (higher FVU)")):
            rows.append({"claim": f"{variant} (KL {coefficient:g}): {label} than TopK SAE",
                         "our figure": f"{mine[key][0]:.3f} vs {base[key][0]:.3f}",
                         "verdict": grade(mine[key][0], base[key][0], seed_se(mine[key][1], args.seeds),
                                          seed_se(base[key][1], args.seeds), higher_is_better=True)})
    print()
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    coefficients = sorted({c for v, c in settings if v == "vsae"})
    for axis, key in zip(axes, ("dead", "fvu", "recovery")):
        for variant, label in (("vsae", "vSAE, learned variance"), ("vsae-fixed", "vSAE, fixed variance")):
            means = [summary[(variant, c)][key][0] for c in coefficients]
            errors = [seed_se(summary[(variant, c)][key][1], args.seeds) for c in coefficients]
            axis.errorbar(coefficients, means, yerr=errors, marker="o", label=label)
        axis.axhline(base[key][0], color="gray", linestyle="--", label="TopK SAE")
        axis.set_xscale("log")
        axis.set_xlabel("KL coefficient")
        axis.set_ylabel(key)
    axes[0].legend(fontsize=8)
    save_figure(figure, args.output_dir, "sae_variational.png")


if __name__ == "__main__":
    main()
