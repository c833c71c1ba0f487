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
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _measure import peak_rss_bytes, rss_bytes, run_worker

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
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
