"""The reward-versus-KL frontier (``divreg frontier``): the tilted policy pi0 exp(r/beta)/Z (the
optimum of KL-regularized RL) and best-of-N, exactly, for a base distribution and rewards given
as JSON, or with no arguments the memoryless Bernoulli model of Yang et al. 2024 (arXiv
2404.01730): n i.i.d. Bernoulli(p) tokens, reward = the number of ones.

Outputs in ``output_dir``: ``frontier.png`` (expected reward against KL(pi || base) for both, and
the gap at equal KL per N) and ``frontier.json``; a table of the best-of-N points, each with the
tilted policy's reward at the same KL.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from ... import alignment as A
from ..._table import format_table


@dataclass
class FrontierConfig:
    # a JSON file holding a list of probabilities (the base distribution), and one holding a list of rewards of the
    # same length; both null: the built-in Bernoulli model below
    base: Optional[str] = None
    rewards: Optional[str] = None
    bernoulli_length: int = 16  # n tokens per sequence (built-in model)
    bernoulli_p: float = 0.5  # each token's probability of a one (built-in model)
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])  # best-of-N
    betas: int = 60  # tilted policies, beta log-spaced so that their KLs span the best-of-N ones
    output_dir: str = "outputs/frontier"

    def __post_init__(self):
        if (self.base is None) != (self.rewards is None):
            raise ValueError("give both base and rewards (JSON files), or neither for the built-in Bernoulli model")
        if self.bernoulli_length < 1 or not 0 < self.bernoulli_p < 1:
            raise ValueError(f"bernoulli_length must be >= 1 and bernoulli_p in (0, 1), got {self.bernoulli_length}, "
                             f"{self.bernoulli_p}")
        if not self.ns or any(n < 1 for n in self.ns) or self.betas < 2:
            raise ValueError(f"ns must be integers >= 1 and betas >= 2, got {self.ns}, {self.betas}")


def _load_vector(path: str, name: str) -> list[float]:
    if not os.path.isfile(path):
        raise ValueError(f"{name} file {path!r} does not exist (a JSON list of numbers)")
    with open(path) as handle:
        try:
            values = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} file {path!r} is not valid JSON ({error.msg})") from None
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{name} file {path!r} must hold a non-empty JSON list of numbers")
    return [float(v) for v in values]


def setup(config: FrontierConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    if config.base is None:
        n, p = config.bernoulli_length, config.bernoulli_p
        # the counts suffice: within a count every sequence has the same base probability and reward
        return A.bernoulli_count_pmf(n, p), torch.arange(n + 1, dtype=torch.float64), \
            f"{n} Bernoulli({p}) tokens, reward = #ones"
    base, rewards = _load_vector(config.base, "base"), _load_vector(config.rewards, "rewards")
    if len(base) != len(rewards):
        raise ValueError(f"base has {len(base)} entries and rewards {len(rewards)}: one reward per outcome")
    base_t, rewards_t = torch.tensor(base, dtype=torch.float64), torch.tensor(rewards, dtype=torch.float64)
    A.kl(base_t, base_t)  # the base is checked here, with the library's message
    if len(set(rewards_t[base_t > 0].tolist())) < 2:
        raise ValueError("every outcome with base probability > 0 has the same reward: there is no trade-off to draw")
    return base_t, rewards_t, f"{len(base)} outcomes from {config.base}"


def frontier_plot(frontier: A.Frontier, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(frontier.tilted_kl, frontier.tilted_reward, label="tilted pi0 exp(r/beta)/Z (KL-regularized optimum)")
    left.plot(frontier.best_of_n_kl, frontier.best_of_n_reward, "o--", label="best-of-N")
    for n, x, y in zip(frontier.ns, frontier.best_of_n_kl, frontier.best_of_n_reward):
        left.annotate(f"N={n}", (x, y), fontsize=7, textcoords="offset points", xytext=(4, -8))
    left.set_xlabel("KL(pi || base)")
    left.set_ylabel("expected reward")
    left.legend(fontsize=7)
    gaps = [t - b for t, b in zip(frontier.tilted_reward_at_best_of_n_kl, frontier.best_of_n_reward)]
    right.plot(frontier.ns, gaps, "o-")
    right.set_xscale("log", base=2)
    right.set_xlabel("N")
    right.set_ylabel("tilted - best-of-N reward at equal KL")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(config: FrontierConfig) -> dict:
    base, rewards, what = setup(config)
    largest = A.kl(A.best_of_n(base, rewards, max(config.ns)), base)
    ceiling = -math.log(float(base[rewards == rewards[base > 0].max()].sum()))
    top = min(max(largest * 1.2, 1e-3), ceiling * 0.999)
    kls = torch.logspace(math.log10(top) - 4, math.log10(top), config.betas).tolist()
    betas = [A.beta_for_kl(base, rewards, value) for value in kls]
    frontier = A.alignment_frontier(base, rewards, betas, sorted(config.ns))
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "frontier.json"), "w") as handle:
        json.dump(frontier._asdict(), handle, indent=2)
    frontier_plot(frontier, os.path.join(config.output_dir, "frontier.png"),
                  f"reward vs KL, exact: {what}")
    rows = [{"N": n, "KL(BoN || base)": abs(k) if abs(k) < 1e-12 else k, "bound log N - (N-1)/N": A.best_of_n_kl_bound(n), "best-of-N reward": b,
             "tilted reward at that KL": t, "gap": 0.0 if abs(t - b) < 1e-12 else t - b}
            for n, k, b, t in zip(frontier.ns, frontier.best_of_n_kl, frontier.best_of_n_reward,
                                  frontier.tilted_reward_at_best_of_n_kl)]
    print(format_table(rows, list(rows[0])))
    print(f"{what}; outputs in {config.output_dir}")
    return frontier._asdict()
