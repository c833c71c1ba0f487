"""HyPO vs DPO under partial coverage (Song et al. 2024, "The Importance of Online Data:
Understanding Preference Fine-tuning via Coverage", arXiv 2406.01462): offline pairs cover only a
few responses; the paper's claim is that DPO's KL to the reference (and its mass on responses the
pairs never show) keeps growing, while HyPO, which adds lambda x KL(pi || ref) estimated on fresh
samples of the policy, keeps them bounded at a similar reward.

One prompt, 20 responses; the reference is a random categorical (logits N(0, 1)); true rewards
r ~ N(0, 1); 64 offline pairs drawn among the first 4 responses only (each pair two distinct seen
responses, uniformly), labelled by the Bradley-Terry model P(a > b) = sigmoid(r_a - r_b). Two
parameterizations of the policy, both starting at the reference:

- ``tabular``: logits = ref logits + theta (20 free parameters; DPO's loss cannot move the unseen
  logits: their mass changes only through the seen ones);
- ``log-linear``: logits = ref logits + Phi theta, Phi a fixed random 20 x 4 feature matrix shared
  by seen and unseen responses (function approximation: what the pairs teach extrapolates).

DPO: the library's ``preference_loss`` (sigmoid, beta 0.1) over all pairs, Adam lr 0.05, 2000
full-batch steps. HyPO: the same plus lambda x the library's ``hypo_kl_surrogate`` on k = 8 fresh
samples of the current policy per step, lambda = 0.01 and 0.1 (the paper's value for its settings
was not available to us; the trade-off between reward and KL moves with it). Measured exactly from the table every 50 steps:
KL(pi || ref), the mass on the 16 unseen responses, the true expected reward E_pi[r]. 8 seeds
(each its own reference, rewards, pairs and features).

    .venv/bin/python experiments/hypo_vs_dpo.py      # about a minute; outputs/experiments/hypo_vs_dpo.png
"""

from __future__ import annotations

import statistics

import torch

from _verdict import experiment_parser, grade, mean_se, print_rows, pyplot, sample_std, save_figure, seed_se
from divreg.losses import hypo_kl_surrogate, preference_loss

torch.set_default_dtype(torch.float64)
RESPONSES, SEEN, PAIRS, FEATURES = 20, 4, 64, 4
BETA, SAMPLES, LR = 0.1, 8, 0.05
METHODS = {"dpo": 0.0, "hypo-0.01": 0.01, "hypo-0.1": 0.1}  # name: lambda


def problem(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(RESPONSES, generator=g), 0)
    reward = torch.randn(RESPONSES, generator=g)
    a = torch.randint(0, SEEN, (PAIRS,), generator=g)
    b = (a + torch.randint(1, SEEN, (PAIRS,), generator=g)) % SEEN  # a different seen response
    a_wins = torch.rand(PAIRS, generator=g) < torch.sigmoid(reward[a] - reward[b])
    chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    features = torch.randn(RESPONSES, FEATURES, generator=g)
    return {"ref": ref, "reward": reward, "chosen": chosen, "rejected": rejected, "features": features}


def train(task: dict, method: str, parameterization: str, steps: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 7919)
    size = RESPONSES if parameterization == "tabular" else FEATURES
    theta = torch.zeros(size, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=LR)
    ref = task["ref"]

    def log_policy():
        shift = theta if parameterization == "tabular" else task["features"] @ theta
        return torch.log_softmax(ref + shift, 0)

    trace = {"step": [], "kl": [], "unseen": [], "reward": []}
    for step in range(steps + 1):
        log_pi = log_policy()
        if step % 50 == 0:
            pi = log_pi.exp().detach()
            trace["step"].append(step)
            trace["kl"].append(float((pi * (log_pi.detach() - ref)).sum()))
            trace["unseen"].append(float(pi[SEEN:].sum()))
            trace["reward"].append(float((pi * task["reward"]).sum()))
        if step == steps:
            break
        loss = preference_loss(log_pi[task["chosen"]], log_pi[task["rejected"]], ref[task["chosen"]],
                               ref[task["rejected"]], beta=BETA).loss.mean()
        if METHODS[method]:
            samples = torch.multinomial(log_pi.exp().detach(), SAMPLES, replacement=True, generator=g)
            loss = loss + METHODS[method] * hypo_kl_surrogate(log_pi[samples], ref[samples], SAMPLES).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return trace


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    traces = {(p, m): [train(problem(s), m, p, args.steps, s) for s in seeds]
              for p in ("tabular", "log-linear") for m in METHODS}
    half = len(traces[("tabular", "dpo")][0]["step"]) // 2

    def stat(key, p, m, index=-1):
        values = [t[key][index] for t in traces[(p, m)]]
        return mean_se(values)

    print(f"{args.seeds} seeds, {args.steps} steps; mean +- standard error over seeds, at the midpoint / the end\n")
    print("| policy | method | KL(pi || ref) mid | KL end | unseen mass mid | unseen mass end | E[r] end |")
    reference = [float((problem(s)["ref"].exp() * problem(s)["reward"]).sum()) for s in seeds]
    print("|---|---|---|---|---|---|---|")
    for (p, m) in traces:
        cells = [f"{stat(k, p, m, i)[0]:.3f} +- {stat(k, p, m, i)[1]:.3f}"
                 for k, i in (("kl", half), ("kl", -1), ("unseen", half), ("unseen", -1), ("reward", -1))]
        print(f"| {p} | {m} | " + " | ".join(cells) + " |")
    print(f"(the reference's E[r]: {statistics.fmean(reference):.3f} +- "
          f"{seed_se(sample_std(reference), len(reference)):.3f}; its unseen mass: "
          f"{statistics.fmean(float(problem(s)['ref'].exp()[SEEN:].sum()) for s in seeds):.3f})\n")
    rows = []
    for p in ("tabular", "log-linear"):
        for key, name in (("kl", "KL(pi || ref)"), ("unseen", "mass on unseen responses")):
            growth = [t[key][-1] - t[key][half] for t in traces[(p, "dpo")]]
            mean, se = mean_se(growth)
            rows.append({"claim": f"{p}: DPO's {name} keeps growing (end - midpoint > 0)",
                         "our figure": f"{mean:+.3f} +- {se:.3f}", "verdict": grade(mean, 0.0, se, 0.0)})
            if key == "unseen":  # the extrapolation claim itself: more mass on unseen responses than the reference
                rise = [t[key][-1] - t[key][0] for t in traces[(p, "dpo")]]
                mean, se = mean_se(rise)
                rows.append({"claim": f"{p}: DPO puts more mass on unseen responses than the reference (end - start)",
                             "our figure": f"{mean:+.3f} +- {se:.3f}", "verdict": grade(mean, 0.0, se, 0.0)})
            for m in list(METHODS)[1:]:
                dpo, hypo = stat(key, p, "dpo"), stat(key, p, m)
                rows.append({"claim": f"{p}: {m}'s {name} at the end is below DPO's",
                             "our figure": f"{hypo[0]:.3f} +- {hypo[1]:.3f} vs DPO {dpo[0]:.3f} +- {dpo[1]:.3f}",
                             "verdict": grade(hypo[0], dpo[0], hypo[1], dpo[1], higher_is_better=False)})
        for m in list(METHODS)[1:]:
            dpo, hypo = stat("reward", p, "dpo"), stat("reward", p, m)
            difference = [h["reward"][-1] - d["reward"][-1] for h, d in zip(traces[(p, m)], traces[(p, "dpo")])]
            mean, se = mean_se(difference)
            rows.append({"claim": f"{p}: {m}'s true reward is not below DPO's (paired over seeds)",
                         "our figure": f"{m} - DPO = {mean:+.3f} +- {se:.3f} ({hypo[0]:.3f} vs {dpo[0]:.3f})",
                         "verdict": "did not hold" if mean < -2 * se else "held"})
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, p in enumerate(("tabular", "log-linear")):
        for column, (key, title) in enumerate((("kl", "KL(pi || ref)"), ("unseen", "mass on unseen responses"),
                                               ("reward", "true expected reward"))):
            axis = axes[row, column]
            for m, color in zip(METHODS, ("tab:red", "tab:cyan", "tab:blue")):
                for i, t in enumerate(traces[(p, m)]):
                    axis.plot(t["step"], t[key], color=color, alpha=0.35, label=m if i == 0 else None)
            axis.set_title(f"{p}: {title}", fontsize=9)
            axis.set_xlabel("step")
        axes[row, 0].legend(fontsize=8)
    figure.suptitle(f"DPO vs HyPO, pairs covering {SEEN} of {RESPONSES} responses ({args.seeds} seeds)", fontsize=10)
    save_figure(figure, args.output_dir, "hypo_vs_dpo.png")


if __name__ == "__main__":
    main()
