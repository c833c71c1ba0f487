"""Benchmark: per-token log-probs + entropy of sampled tokens, forward and backward, from hidden
states and the output weights (what every RL trainer computes for its policy loss).

Four variants, each measurement in its own subprocess (``torch.set_num_threads(2)``): one warm-up
call, then the median of ``--calls`` timed calls (forward + backward); peak extra memory =
high-water RSS minus RSS just before the first call; variants interleaved and repeated (medians;
memory ranges in brackets):

- ``naive``: full logits ``h @ W^T``, ``log_softmax``, ``gather``, entropy ``-(p * log p).sum``;
- ``trl``: full logits, TRL's ``selective_log_softmax`` (its row loop over ``logsumexp``) and
  ``entropy_from_logits`` (chunked), as TRL's GRPOTrainer computes them (needs ``pip install trl``);
- ``trl_chunked``: TRL 1.16's own chunked kernel, ``trl.kernels.ChunkedLogProbFunction`` with the
  entropy, called as its fused LM head calls it (``_CHUNKED_LOGPROB_CHUNK_SIZE`` vocabulary tiles;
  on a CPU, without Triton, its torch path, which TRL's trainers feed every position, masked ones
  included: here every position is a sampled token, so both project the same rows);
- ``fused``: :func:`divreg.fused.fused_linear_token_logprobs` (``return_entropy=True``).

The backward pass is that of ``(logprobs * g1 + entropy * g2).sum()`` with fixed random g1, g2,
and all three give the same values (checked: the relative difference is printed).

    python benchmarks/rl_logprobs.py                      # N=8192, H=512, V=32000 and 128000, 3 repeats
    python benchmarks/rl_logprobs.py --vocab 32000 --repeats 1
    python benchmarks/rl_logprobs.py --tokens 2048 --vocab 1024 8000 32000   # where fused=auto turns on
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _measure import peak_rss_bytes, rss_bytes, run_worker

VARIANTS = ("naive", "trl", "trl_chunked", "fused")


def _worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    n, hidden_size, vocab = spec["n"], spec["hidden"], spec["vocab"]
    hidden = (torch.randn(n, hidden_size, generator=generator)).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=generator) * hidden_size ** -0.5).requires_grad_()
    ids = torch.randint(0, vocab, (n,), generator=generator)
    g1, g2 = torch.randn(n, generator=generator), torch.randn(n, generator=generator)

    if spec["variant"] == "fused":
        from divreg.fused import fused_linear_token_logprobs

        def compute():
            out = fused_linear_token_logprobs(hidden, weight, ids, return_entropy=True)
            return out.logprobs, out.entropy
    elif spec["variant"] == "trl_chunked":
        from trl.kernels import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        def compute():
            out = ChunkedLogProbFunction.apply(hidden, weight, None, ids, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                               ("entropy",))
            return out[0], out[1]
    elif spec["variant"] == "trl":
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        def compute():
            logits = hidden @ weight.t()
            return selective_log_softmax(logits, ids), entropy_from_logits(logits)
    else:
        def compute():
            log_probs = torch.log_softmax(hidden @ weight.t(), -1)
            return log_probs.gather(-1, ids[:, None]).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1)

    rss_before = rss_bytes()
    times = []
    for _ in range(1 + spec.get("calls", 3)):  # a warm-up call (first-call costs), then the timed ones
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        logprobs, entropy = compute()
        (logprobs * g1 + entropy * g2).sum().backward()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    peak = peak_rss_bytes() - rss_before
    return {"seconds": seconds, "peak_mb": peak / 2**20, "logprob_sum": float(logprobs.detach().double().sum()),
            "entropy_sum": float(entropy.detach().double().sum()),
            "grad_norm": float(weight.grad.double().norm())}


def _measure(spec: dict) -> dict:
    return run_worker(__file__, spec, skip_if={"No module named 'trl'": "no trl"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per worker, after one warm-up call")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    print("| V | variant | seconds | vs fused | peak MB | vs fused | logprob rel. diff | entropy rel. diff | "
          "grad rel. diff |\n|---|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        runs = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                runs[variant].append(_measure({"n": args.tokens, "hidden": args.hidden, "vocab": vocab,
                                               "variant": variant, "calls": args.calls}))
        fused = {k: statistics.median(r[k] for r in runs["fused"]) for k in runs["fused"][0]}
        for variant in VARIANTS:
            ok = [r for r in runs[variant] if "failed" not in r]
            if not ok:
                print(f"| {vocab} | {variant} | {runs[variant][0]['failed']} | - | - | - | - | - | - |")
                continue
            med = {k: statistics.median(r[k] for r in ok) for k in ok[0]}
            low, high = min(r["peak_mb"] for r in ok), max(r["peak_mb"] for r in ok)
            print(f"| {vocab} | {variant} | {med['seconds']:.2f} | {med['seconds'] / fused['seconds']:.2f}x | "
                  f"{med['peak_mb']:.0f} ({low:.0f}-{high:.0f}) | {med['peak_mb'] / fused['peak_mb']:.1f}x | "
                  + " | ".join(f"{abs(med[k] - fused[k]) / abs(fused[k]):.1e}"
                               for k in ("logprob_sum", "entropy_sum", "grad_norm")) + " |", flush=True)


if __name__ == "__main__":
    main()
