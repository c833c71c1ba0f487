"""InfAlign (Balashankar et al. 2024, "InfAlign: Inference-aware language model alignment", arXiv
2412.19792) in calibrated space, exactly (quadrature): the base policy is uniform on the
calibrated reward u in [0, 1]; aligning with a transform Phi of u and a KL penalty gives the density
pi(u) ~ exp(Phi(u)/beta). For best-of-N at inference (N = 1, 4, 32) and KL(pi || base) = 0.5, 1, 2
nats, which transform maximizes the best-of-N win rate against the base's best-of-N: the identity
Phi = u, exp(t u) (t = 1..64) or -exp(-t u) (t = 1..16)? The paper's claims (as described to us;
its body was not available): the identity is the right transform for N = 1 (the standard win rate),
and best-of-N wants exp(t u) with a larger t for a larger N.

A transform that cannot reach a KL by quadrature (a saturating -exp(-t u) at 2 nats) is shown
as nan and left out. Rule (exact computations): "identity best at N = 1" held when no other transform's win rate exceeds
the identity's by more than 1e-9 at each KL; "larger t for larger N" held when the best exp(t u)'s t
does not decrease from N = 1 to 4 to 32 at each KL and grows somewhere.

    .venv/bin/python experiments/alignment_infalign.py    # about a minute; outputs/experiments/alignment_infalign.png
"""

from __future__ import annotations

from _verdict import experiment_parser, HELD, NOT_HELD, print_rows, pyplot, save_figure
import divreg.alignment as A

NS, KLS = (1, 4, 32), (0.5, 1.0, 2.0)
TRANSFORMS = [("identity", 0.0)] + [("best_of_n", t) for t in (1, 2, 4, 8, 16, 32, 64)] + \
             [("worst_of_n", t) for t in (1, 2, 4, 8, 16)]


def name(kind: str, t: float) -> str:
    return "identity" if kind == "identity" else (f"exp({t:g}u)" if kind == "best_of_n" else f"-exp(-{t:g}u)")


def main() -> None:
    args = experiment_parser(__doc__).parse_args()
    table = {}  # (N, KL) -> {transform name: win rate}
    for target in KLS:
        for kind, t in TRANSFORMS:
            phi = A.calibrated_transform(kind, t or 1.0)
            try:
                beta = A.calibrated_beta_for_kl(phi, target)
            except ValueError:  # this KL is out of reach of the quadrature for this Phi (saturating -exp(-t u))
                beta = None
            for n in NS:
                table.setdefault((n, target), {})[name(kind, t)] = (
                    float("nan") if beta is None else A.calibrated_policy(phi, beta, n).win_rate)
    names = [name(kind, t) for kind, t in TRANSFORMS]
    print("| N | KL | " + " | ".join(names) + " | best |")
    print("|---|---|" + "---|" * (len(names) + 1))
    best = {}
    for (n, target), rates in sorted(table.items()):
        best[(n, target)] = max((k for k in rates if rates[k] == rates[k]), key=rates.get)
        print(f"| {n} | {target} | " + " | ".join(f"{rates[k]:.4f}" for k in names) + f" | {best[(n, target)]} |")
    print()
    rows = []
    identity_best = all(table[(1, k)][best[(1, k)]] <= table[(1, k)]["identity"] + 1e-9 for k in KLS)
    rows.append({"claim": "N = 1: the identity transform of the calibrated reward maximizes the win rate",
                 "our figure": ", ".join(f"KL {k}: best {best[(1, k)]} ({table[(1, k)][best[(1, k)]]:.4f}) vs "
                                         f"identity {table[(1, k)]['identity']:.4f}" for k in KLS),
                 "verdict": HELD if identity_best else NOT_HELD})
    best_t = {(n, k): max((t for kind, t in TRANSFORMS if kind == "best_of_n"),
                          key=lambda t: table[(n, k)][name("best_of_n", t)]) for n in NS for k in KLS}
    growing = all(best_t[(1, k)] <= best_t[(4, k)] <= best_t[(32, k)] and best_t[(1, k)] < best_t[(32, k)]
                  for k in KLS)
    rows.append({"claim": "best-of-N: the best exp(t u) has a larger t for a larger N",
                 "our figure": "; ".join(f"KL {k}: t = " + " / ".join(f"{best_t[(n, k)]:g}" for n in NS)
                                         + f" for N = {' / '.join(map(str, NS))}" for k in KLS),
                 "verdict": HELD if growing else NOT_HELD})
    print_rows(rows)
    plt = pyplot()
    figure, axes = plt.subplots(1, len(KLS), figsize=(13, 3.8))
    ts = [t for kind, t in TRANSFORMS if kind == "best_of_n"]
    for axis, k in zip(axes, KLS):
        for n in NS:
            gain = [table[(n, k)][name("best_of_n", t)] - table[(n, k)]["identity"] for t in ts]
            axis.plot(ts, gain, "o-", label=f"N={n}")
        axis.axhline(0, color="gray", lw=0.8)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("t of exp(t u)")
        axis.set_title(f"KL = {k}: win rate minus the identity's", fontsize=9)
        axis.legend(fontsize=8)
    save_figure(figure, args.output_dir, "alignment_infalign.png")


if __name__ == "__main__":
    main()
