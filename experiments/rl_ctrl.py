"""InfAlign's CTRL (Balashankar et al. 2024, arXiv 2412.19792), graded exactly on an enumerable
toy: with best-of-N sampling at inference, the KL-regularized policy of the *calibrated and
exp(t C)-transformed* reward (the right t) wins more often than that of the raw reward, at
equal KL to the base policy.

Everything is exact (no sampling): a base policy pi0 over K outcomes with distinct rewards; the
KL-optimal policy of a reward R at coefficient beta is the tilted pi0 exp(R / beta) / Z; beta is
found by bisection so that KL(pi || pi0) equals the target; best-of-N from a policy has the
distribution F(y)^N - F^-(y)^N over outcomes sorted by reward; the win rate of best-of-N from pi
against best-of-N from pi0 counts ties one half. The calibrated reward is the population form of
`divreg.rl.calibrated_rewards`: C(y) = P_pi0(r < r(y)) + pi0(y) / 2. The exact parts are
`divreg.alignment`'s (tilted_policy, beta_for_kl, best_of_n, win_rate, calibrate).

    .venv/bin/python experiments/rl_ctrl.py      # seconds; writes outputs/experiments/rl_ctrl.png
"""

from __future__ import annotations


import torch

from _verdict import experiment_parser, HELD, NOT_HELD, print_rows, pyplot, save_figure
from divreg.alignment import beta_for_kl, best_of_n, calibrate, tilted_policy, win_rate
from divreg.rl import ctrl_transform

torch.set_default_dtype(torch.float64)


def at_kl(pi0: torch.Tensor, reward: torch.Tensor, target: float) -> torch.Tensor:
    """The tilted policy whose KL to pi0 is ``target``."""
    return tilted_policy(pi0, reward, beta_for_kl(pi0, reward, target))


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--outcomes", type=int, default=200)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    pi0 = torch.softmax(torch.randn(args.outcomes, generator=generator) * 1.5, -1)
    z = torch.randn(args.outcomes, generator=generator)
    # the raw reward in three shapes with the same ranking (so the same calibrated reward and the same win
    # rates): the KL-optimal policy of the raw reward depends on its shape, the calibrated one does not
    shapes = {"z": z, "z^3": z ** 3, "tanh(z)": torch.tanh(z)}
    reward = z  # the ranking, for best-of-N and the win rate
    calibrated = calibrate(pi0, reward)  # C(y) under pi0
    ts = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    rows, curves = [], {}
    for n in (4, 16):
        base = best_of_n(pi0, reward, n)
        for target in (0.25, 1.0, 2.0):
            raws = {name: win_rate(best_of_n(at_kl(pi0, shaped, target), reward, n), base, reward)
                    for name, shaped in shapes.items()}
            raw = max(raws.values())
            identity = win_rate(best_of_n(at_kl(pi0, calibrated, target), reward, n), base, reward)
            by_t = {t: win_rate(best_of_n(at_kl(pi0, ctrl_transform(calibrated, "best_of_n", t), target), reward, n),
                                base, reward) for t in ts}
            best_t = max(by_t, key=by_t.get)
            rows.append({"claim": f"CTRL's exp(tC) beats the untransformed reward at best-of-{n}, KL {target}",
                         "our figure": f"win rate {by_t[best_t]:.4f} (t={best_t}) vs raw reward "
                                       + ", ".join(f"{name} {value:.4f}" for name, value in raws.items())
                                       + f"; calibrated C {identity:.4f}",
                         "verdict": HELD if by_t[best_t] > max(raw, identity) + 1e-9 else NOT_HELD})
            curves[(n, target)] = (raw, identity, by_t)
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, n in zip(axes, (4, 16)):
        for target in (0.25, 1.0, 2.0):
            raw, identity, by_t = curves[(n, target)]
            line, = axis.plot(ts, [by_t[t] for t in ts], marker="o", label=f"exp(tC), KL {target}")
            axis.axhline(raw, color=line.get_color(), linestyle="--", linewidth=1)  # the best raw shape
        axis.set_xscale("log")
        axis.set_xlabel("t")
        axis.set_ylabel(f"best-of-{n} win rate vs pi0's best-of-{n}")
        axis.set_title(f"N = {n}; dashed: best raw reward, same KL", fontsize=9)
        axis.legend(fontsize=7)
    save_figure(figure, args.output_dir, "rl_ctrl.png")


if __name__ == "__main__":
    main()
