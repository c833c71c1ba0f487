"""Benchmark: what an RL step computes per micro-batch from the policy's and the reference's
hidden states with ``kl_estimator=exact``, in one chunked pass over the vocabulary against the
passes it replaced.

- ``separate`` (divreg before): the policy's log-probs and entropy
  (:func:`divreg.fused.fused_linear_token_logprobs`), the reference's log-probs (a second call),
  the exact KL of the loss (:func:`divreg.fused.fused_linear_divergence`, with its gradient) and
  the logged exact KL (the same kernel again, without gradient): four passes, the policy's
  logits built three times forward and twice backward;
- ``one_pass``: :func:`divreg.fused.fused_linear_token_logprobs` with the reference as its
  target: everything in one loop (the policy's logits once forward, once backward; the
  reference's once each).

The loss is ``sum(logprobs * g1 + entropy * g2) + kl_mean``, forward + backward; values and
gradients are checked equal. Each variant in its own subprocess (``torch.set_num_threads(2)``),
one warm-up call then the median of ``--calls``; variants interleaved, ``--repeats`` times.

    .venv/bin/python benchmarks/rl_one_pass.py                     # N=1024 tokens, H=512, V=8000 and 32000

``--peers``: the whole GRPO micro-batch loss (clipped surrogate + beta k3 KL to the reference, token
mean, beta = 0.04) from the policy's and the reference's hidden states, against Liger-Kernel
0.8.5's ``LigerFusedLinearGRPOLoss`` (pure torch, its chunks ``torch.compile``-d by default,
reference log-probs from ``ref_input``/``ref_weight`` in the same loop; ``pip install
liger-kernel==0.8.5 --no-deps``) with its defaults (``loss_type="dapo"``: token mean, as divreg's
``token_mean``) and the same beta. divreg's side is the rl recipe's one-pass path:
:func:`~divreg.fused.fused_linear_token_logprobs` with the reference as target (which also gives
the entropy and the exact KL that rl logs; Liger computes neither) and
:class:`divreg.losses.GRPOLoss`. The losses are checked equal.

    .venv/bin/python benchmarks/rl_one_pass.py --peers --vocab 32000 128000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _measure import peak_rss_bytes, peak_rss_since_reset_bytes, reset_peak_rss, rss_bytes, run_worker

VARIANTS = ("separate", "one_pass")


def _worker(spec: dict) -> dict:
    import torch

    from divreg.fused import fused_linear_divergence, fused_linear_token_logprobs

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    n, size, vocab = spec["n"], spec["hidden"], spec["vocab"]
    hidden = torch.randn(n, size, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, size, generator=generator) * size ** -0.5).requires_grad_()
    ref_hidden = hidden.detach() + 0.1 * torch.randn(n, size, generator=generator)
    ref_weight = weight.detach() + 0.01 * torch.randn(vocab, size, generator=generator) * size ** -0.5
    ids = torch.randint(0, vocab, (n,), generator=generator)
    g1, g2 = torch.randn(n, generator=generator), torch.randn(n, generator=generator)

    def step():
        if spec["variant"] == "one_pass":
            out = fused_linear_token_logprobs(hidden, weight, ids, target_hidden=ref_hidden, target_weight=ref_weight)
            logprobs, entropy, kl, ref_logprobs, logged = out.logprobs, out.entropy, out.kl.mean(), \
                out.target_logprobs, out.kl.detach()
        else:
            scored = fused_linear_token_logprobs(hidden, weight, ids, return_entropy=True)
            logprobs, entropy = scored.logprobs, scored.entropy
            with torch.no_grad():
                ref_logprobs = fused_linear_token_logprobs(ref_hidden, ref_weight, ids)
                logged = fused_linear_divergence(hidden.detach(), weight.detach(), ref_hidden, ref_weight,
                                                 divergence="reverse_kl", reduction="none")
            kl = fused_linear_divergence(hidden, weight, ref_hidden, ref_weight, divergence="reverse_kl",
                                         reduction="mean")
        loss = (logprobs * g1 + entropy * g2).sum() + kl
        loss.backward()
        return loss, ref_logprobs, logged

    before = rss_bytes()
    times = []
    for _ in range(1 + spec["calls"]):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        loss, ref_logprobs, logged = step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[1:]), "peak_mb": (peak_rss_bytes() - before) / 2 ** 20,
            "loss": float(loss), "ref_logprob_sum": float(ref_logprobs.double().sum()),
            "logged_kl_sum": float(logged.double().sum()), "grad_norm": float(weight.grad.double().norm())}


def _peer_worker(spec: dict) -> dict:
    """One GRPO micro-batch loss, forward + backward: divreg's one-pass path or Liger's kernel;
    one warm-up call (Liger compiles), then the median of ``calls``; the peak after the warm-up."""
    import torch

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    sequences, length, size, vocab = spec["sequences"], spec["length"], spec["hidden"], spec["vocab"]
    hidden = torch.randn(sequences, length, size, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, size, generator=generator) * size ** -0.5).requires_grad_()
    ref_hidden = hidden.detach() + 0.1 * torch.randn(sequences, length, size, generator=generator)
    ref_weight = weight.detach() + 0.01 * torch.randn(vocab, size, generator=generator) * size ** -0.5
    ids = torch.randint(0, vocab, (sequences, length), generator=generator)
    mask = torch.arange(length)[None] < torch.randint(length // 2, length + 1, (sequences, 1), generator=generator)
    advantages = torch.randn(sequences, generator=generator)
    beta = 0.04
    if spec["variant"] == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        liger = LigerFusedLinearGRPOLoss(beta=beta)  # every other option its default

        def step():
            loss, _ = liger(hidden, weight, ids, mask.long(), advantages, ref_input=ref_hidden, ref_weight=ref_weight)
            return loss
    else:
        from divreg.fused import fused_linear_token_logprobs
        from divreg.losses import GRPOLoss

        grpo = GRPOLoss(kl_estimator="k3")  # token_mean, eps 0.2

        def step():
            out = fused_linear_token_logprobs(hidden.flatten(0, 1), weight, ids.flatten(),
                                              target_hidden=ref_hidden.flatten(0, 1), target_weight=ref_weight)
            logprobs, ref_logprobs = out.logprobs.view(sequences, length), out.target_logprobs.view(sequences, length)
            return grpo(logprobs, None, advantages, mask, tokens=mask.sum(), sequences=sequences,
                        ref_logprobs=ref_logprobs, kl_coef=beta).loss

    times, peak = [], 0.0
    for call in range(1 + spec["calls"]):
        hidden.grad = weight.grad = None
        if call == 1:
            reset_peak_rss()
            before = rss_bytes()
        start = time.perf_counter()
        loss = step()
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = (peak_rss_since_reset_bytes() - before) / 2 ** 20
    return {"seconds": statistics.median(times[1:]), "peak_mb": peak, "loss": float(loss),
            "grad_norm": float(weight.grad.double().norm())}


def peers(args) -> None:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        raise SystemExit("--peers needs Liger-Kernel: pip install liger-kernel==0.8.5 --no-deps")
    print(f"{args.sequences} sequences x {args.length} tokens, H={args.hidden}; medians of {args.repeats} runs of "
          f"{args.calls} warm calls\n")
    print("| V | library | seconds | speed-up of divreg | peak MB | divreg uses less by | loss rel. diff | "
          "grad rel. diff |\n|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        runs: dict = {"liger": [], "divreg": []}
        for _ in range(args.repeats):
            for variant in runs:
                runs[variant].append(run_worker(__file__, {"peer": True, "sequences": args.sequences,
                                                           "length": args.length, "hidden": args.hidden,
                                                           "vocab": vocab, "variant": variant, "calls": args.calls}))
        med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
        ours = med["divreg"]
        for variant, m in med.items():
            print(f"| {vocab} | {variant} | {m['seconds']:.2f} | {m['seconds'] / ours['seconds']:.2f}x | "
                  f"{m['peak_mb']:.0f} | {m['peak_mb'] / ours['peak_mb']:.1f}x | "
                  f"{abs(m['loss'] - ours['loss']) / abs(ours['loss']):.1e} | "
                  f"{abs(m['grad_norm'] - ours['grad_norm']) / ours['grad_norm']:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--peers", action="store_true", help="the GRPO loss against Liger-Kernel's (see above)")
    parser.add_argument("--sequences", type=int, default=8, help="--peers: completions per micro-batch")
    parser.add_argument("--length", type=int, default=128, help="--peers: completion length")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps((_peer_worker if spec.get("peer") else _worker)(spec)))
        return
    if args.peers:
        peers(args)
        return
    print("| V | variant | seconds | speed-up | peak MB | loss rel. diff | logged KL rel. diff | grad rel. diff |\n"
          "|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        runs: dict = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                runs[variant].append(run_worker(__file__, {"n": args.tokens, "hidden": args.hidden, "vocab": vocab,
                                                           "variant": variant, "calls": args.calls}))
        med = {v: {k: statistics.median(r[k] for r in runs[v]) for k in runs[v][0]} for v in VARIANTS}
        base = med["separate"]
        for variant in VARIANTS:
            m = med[variant]
            print(f"| {vocab} | {variant} | {m['seconds']:.2f} | {base['seconds'] / m['seconds']:.2f}x | "
                  f"{m['peak_mb']:.0f} | " + " | ".join(f"{abs(m[k] - base[k]) / abs(base[k]):.1e}" for k in
                                                        ("loss", "logged_kl_sum", "grad_norm")) + " |", flush=True)


if __name__ == "__main__":
    main()
