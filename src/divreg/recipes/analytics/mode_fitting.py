"""Mode fitting: a single-mode student fitted to a two-mode target under each divergence.

A toy that shows what the choice of divergence does: forward KL (mean-seeking) spreads the
student over both modes, reverse KL (mode-seeking) collapses it onto one, and JSD, total
variation and the skewed KLs land in between. It illustrates the mode-averaging /
mode-collapsing argument made for distillation objectives in SinKD (Cui et al.,
"SinKD: Sinkhorn Distance Minimization for Knowledge Distillation", 2024, arXiv 2402.17110).

Shaped setup -> train -> report: ``run(ModeFittingConfig())`` returns the results and writes
``mode_fitting.png`` and ``results.json`` under ``output_dir``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm.auto import tqdm

from ... import divergences as D
from ..._table import format_table


@dataclass
class ModeFittingConfig:
    bins: int = 100  # support size: points evenly spaced on [-support_limit, support_limit]
    support_limit: float = 6.0  # half-width of the support
    mode_centers: list[float] = field(default_factory=lambda: [-2.5, 2.5])  # the target's two modes
    mode_std: float = 0.6  # width of each target mode
    left_weight: float = 0.55  # target mass of the left mode (the right one gets the rest)
    student: str = "gaussian"  # "gaussian" (logits of a discretized Gaussian: mean, log-std) or "free" logits
    init_mean: float = 1.5  # student's starting mean, nearer the right mode
    init_std: float = 1.0  # student's starting width
    steps: int = 1500  # Adam steps per divergence
    lr: float = 0.03  # Adam learning rate
    seed: int = 0  # seed of the "free" student's initial noise
    output_dir: str = "outputs/mode_fitting"  # where the plot and results.json go

    def __post_init__(self):
        if self.bins < 4:
            raise ValueError(f"bins must be >= 4, got {self.bins}")
        if len(self.mode_centers) != 2:
            raise ValueError(f"mode_centers must hold two numbers, got {self.mode_centers}")
        for key in ("mode_std", "init_std", "support_limit", "lr"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0.0 < self.left_weight < 1.0:
            raise ValueError(f"left_weight must be in (0, 1), got {self.left_weight}")
        if self.student not in ("gaussian", "free"):
            raise ValueError(f"student must be 'gaussian' or 'free', got {self.student!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


# The objectives compared, by display name.
OBJECTIVES = {
    "forward KL": D.forward_kl,
    "reverse KL": D.reverse_kl,
    "JSD(0.5)": partial(D.generalized_jsd, beta=0.5),
    "TV": D.total_variation,
    "skew KL(0.1)": partial(D.skew_kl, alpha=0.1),
    "skew RKL(0.1)": partial(D.skew_reverse_kl, alpha=0.1),
    "alpha(0.5)": partial(D.alpha_divergence, alpha=0.5),
}


def _support(config: ModeFittingConfig) -> torch.Tensor:
    return torch.linspace(-config.support_limit, config.support_limit, config.bins, dtype=torch.float64)  # (V,)


def target_logits(config: ModeFittingConfig) -> torch.Tensor:
    """Log of a two-Gaussian mixture evaluated on the support (unnormalized logits)."""
    x = _support(config)
    weights = torch.tensor([config.left_weight, 1.0 - config.left_weight], dtype=torch.float64)
    centers = torch.tensor(config.mode_centers, dtype=torch.float64)
    log_components = -0.5 * ((x[:, None] - centers) / config.mode_std) ** 2  # (V, 2)
    return torch.logsumexp(log_components + weights.log(), dim=-1)  # (V,)


class Student(torch.nn.Module):
    """Logits of a discretized Gaussian (2 parameters) or free logits (V parameters)."""

    def __init__(self, config: ModeFittingConfig):
        super().__init__()
        self.kind = config.student
        self.register_buffer("x", _support(config))
        if self.kind == "gaussian":
            self.mean = torch.nn.Parameter(torch.tensor(config.init_mean, dtype=torch.float64))
            self.log_std = torch.nn.Parameter(torch.tensor(math.log(config.init_std), dtype=torch.float64))
        else:
            generator = torch.Generator().manual_seed(config.seed)
            start = -0.5 * ((self.x - config.init_mean) / config.init_std) ** 2
            self.free = torch.nn.Parameter(start + 0.01 * torch.randn(config.bins, generator=generator, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        if self.kind == "gaussian":
            return -0.5 * ((self.x - self.mean) / self.log_std.exp()) ** 2  # (V,)
        return self.free


def fit(config: ModeFittingConfig, objective) -> torch.Tensor:
    """Minimize ``objective(student_logits, target_logits)`` with Adam; return final logits."""
    student = Student(config)
    target = target_logits(config)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    for _ in range(config.steps):
        optimizer.zero_grad()
        objective(student(), target).backward()
        optimizer.step()
    return student().detach()


def summarize(logits: torch.Tensor, config: ModeFittingConfig) -> dict[str, float]:
    """Every divergence to the target, mass on each side of the midpoint, entropy."""
    target = target_logits(config)
    probs = torch.softmax(logits, -1)
    midpoint = sum(config.mode_centers) / 2
    left = _support(config) < midpoint
    row = {name: float(fn(logits, target)) for name, fn in OBJECTIVES.items()}
    row["left mass"] = float(probs[left].sum())
    row["right mass"] = float(probs[~left].sum())
    row["entropy"] = float(-(probs * torch.log_softmax(logits, -1)).sum())
    return row


def plot(fitted: dict[str, torch.Tensor], config: ModeFittingConfig, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _support(config).numpy()
    target = torch.softmax(target_logits(config), -1).numpy()
    columns = 4
    rows = math.ceil(len(fitted) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), sharex=True, sharey=True)
    for axis in axes.flat[len(fitted):]:
        axis.set_visible(False)
    for axis, (name, logits) in zip(axes.flat, fitted.items()):
        axis.fill_between(x, target, color="0.8", label="target")
        axis.plot(x, torch.softmax(logits, -1).numpy(), color="C3", lw=2, label="student")
        axis.set_title(f"minimize {name}")
    axes.flat[0].legend(loc="upper left")
    figure.suptitle(f"Single-mode student ({config.student}) fitted to a two-mode target")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(config: ModeFittingConfig) -> dict[str, dict[str, float]]:
    """Fit one student per objective, print the table, write the plot and results.json."""
    started = time.perf_counter()
    os.makedirs(config.output_dir, exist_ok=True)
    fitted = {name: fit(config, fn) for name, fn in tqdm(OBJECTIVES.items(), desc="mode fitting", unit="objective")}
    results = {name: summarize(logits, config) for name, logits in fitted.items()}
    plot_path = os.path.join(config.output_dir, "mode_fitting.png")
    plot(fitted, config, plot_path)
    with open(os.path.join(config.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    columns = ["minimized", *OBJECTIVES, "left mass", "right mass", "entropy"]
    print(format_table([{"minimized": name, **row} for name, row in results.items()], columns, "{:.3f}"))
    print(f"target: left mass {config.left_weight:.3f}, right mass {1 - config.left_weight:.3f}, "
          f"entropy {summarize(target_logits(config), config)['entropy']:.3f}")
    print(f"plot: {plot_path}  ({time.perf_counter() - started:.1f} s)")
    return results
