"""Benchmark: fused, chunked divergence vs the naive full-logits computation.

Each measurement runs in its own subprocess (``torch.set_num_threads(2)``); peak extra memory
is the process's high-water RSS minus its RSS just before the call; naive and fused runs are
interleaved and each is repeated; the table shows medians and the ratios naive / fused. The
achieved GFLOP/s of each variant is compared with a plain fp32 matmul of the same shapes,
measured in the same run (the physical limit on this machine).

The naive baseline is what a careful user writes without a fused kernel: ignored rows dropped
*before* the matmuls, full student and teacher logits of the valid rows, ``log_softmax``, the
divergence formula on those ``[n x V]`` tensors (``F.kl_div(..., log_target=True)`` for the KLs,
TRL's stacked-``logsumexp`` mixture for the JSD, DistiLLM's probability mixture for the skew
KLs), mean, autograd. Memory cells show the median and, in brackets, the range over the
repeats (peak memory varies from run to run with how the allocator recycles blocks).

    python benchmarks/fused_divergence.py                       # the full grid of the issue
    python benchmarks/fused_divergence.py --vocab 32000 --divergences forward_kl --repeats 3
    python benchmarks/fused_divergence.py --tokens 2048 --hidden 256 --vocab 32000 --divergences forward_kl \
        --temperatures 1 --no-mixed-hidden --fused-only-vocab --repeats 8   # the spread of peak memory
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

from _measure import peak_rss_bytes, peak_rss_since_reset_bytes, reset_peak_rss, rss_bytes, run_worker

TRL_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0, "generalized_jsd": 0.5}  # TRL's generalized-JSD beta of each

DIVERGENCES = {  # name -> options
    "forward_kl": {},
    "reverse_kl": {},
    "generalized_jsd": {"beta": 0.5},
    "skew_kl": {"alpha": 0.1},
    "skew_reverse_kl": {"alpha": 0.1},
    "total_variation": {},
    "alpha_divergence": {"alpha": 0.5},
    "topk_kl": {"k": 32},
}


# ----------------------------------------------------------------------------- worker side
def _naive_values(name, options, logits, target_logits, temperature):
    """Per-token divergence, written the way common trainers write it (full tensors)."""
    import torch
    import torch.nn.functional as F

    log_q = F.log_softmax(logits / temperature, -1)
    log_p = F.log_softmax(target_logits / temperature, -1)
    if name == "forward_kl":
        return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    if name == "reverse_kl":
        return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    if name == "generalized_jsd":  # TRL's generalized_jsd_loss
        beta = options["beta"]
        log_m = torch.logsumexp(torch.stack([log_q + math.log(1 - beta), log_p + math.log(beta)]), dim=0)
        kl_p = F.kl_div(log_m, log_p, log_target=True, reduction="none").sum(-1)
        kl_q = F.kl_div(log_m, log_q, log_target=True, reduction="none").sum(-1)
        return beta * kl_p + (1 - beta) * kl_q
    p, q = log_p.exp(), log_q.exp()
    if name == "skew_kl":  # DistiLLM: KL(p || a p + (1 - a) q)
        alpha = options["alpha"]
        return (p * (log_p - torch.log(alpha * p + (1 - alpha) * q))).sum(-1)
    if name == "skew_reverse_kl":
        alpha = options["alpha"]
        return (q * (log_q - torch.log((1 - alpha) * p + alpha * q))).sum(-1)
    if name == "total_variation":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "alpha_divergence":
        alpha = options["alpha"]
        return (torch.exp(alpha * log_p + (1 - alpha) * log_q).sum(-1) - 1) / (alpha * (alpha - 1))
    if name == "topk_kl":  # bucket form
        top_log_p, index = log_p.topk(options["k"], -1)
        top_log_q = log_q.gather(-1, index)
        tail_p = torch.log1p(-top_log_p.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
        tail_q = torch.log1p(-top_log_q.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
        coarse_p, coarse_q = torch.cat([top_log_p, tail_p], -1), torch.cat([top_log_q, tail_q], -1)
        return (coarse_p.exp() * (coarse_p - coarse_q)).sum(-1)
    raise ValueError(name)


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    n, vocab, hs, ht = spec["n"], spec["vocab"], spec["hs"], spec["ht"]
    hidden = torch.randn(n, hs).requires_grad_()
    weight = (torch.randn(vocab, hs) / math.sqrt(hs)).requires_grad_()
    target_hidden = torch.randn(n, ht)
    target_weight = 2 * torch.randn(vocab, ht) / math.sqrt(ht)
    labels = torch.randint(0, vocab, (n,))
    labels[torch.rand(n) < spec["ignored"]] = -100
    valid = int((labels != -100).sum())
    name, options, temperature = spec["divergence"], DIVERGENCES[spec["divergence"]], spec["temperature"]

    if spec["variant"] == "matmul":  # the physical limit: one plain fp32 matmul, (n x Hs) @ (Hs x V)
        x = hidden.detach()[:valid].contiguous()
        torch.mm(x, weight.detach().t())
        start = time.perf_counter()
        for _ in range(3):
            torch.mm(x, weight.detach().t())
        seconds = (time.perf_counter() - start) / 3
        return {"gflops": 2 * valid * vocab * hs / seconds / 1e9}

    def naive():
        mask = labels != -100
        logits = hidden[mask] @ weight.t()  # (n, V): ignored rows dropped before the matmul
        with torch.no_grad():
            target_logits = target_hidden[mask] @ target_weight.t()  # (n, V)
        loss = _naive_values(name, options, logits, target_logits, temperature).mean()
        loss.backward()
        return loss

    from divreg.fused import fused_linear_divergence  # imported before the memory baseline

    def fused():
        budget = {"memory_budget_mb": spec["budget_mb"]} if spec.get("budget_mb") else {}
        loss = fused_linear_divergence(hidden, weight, target_hidden, target_weight, labels=labels,
                                       divergence=name, temperature=temperature, **options, **budget)
        loss.backward()
        return loss

    def trl_chunked():  # TRL 1.16's chunked loss of its DistillationTrainer (beta 0: forward KL, 1: reverse KL, 0.5: JSD)
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        loss, _, _ = _chunked_divergence_loss(hidden[None], target_hidden[None], weight, target_weight,
                                              (labels != -100)[None].long(), TRL_BETA[name], temperature=temperature)
        loss.backward()
        return loss

    variants = {"naive": naive, "fused": fused, "trl": trl_chunked}
    if spec["variant"] == "trl":
        from trl.trainer import distillation_trainer  # noqa: F401  (imported before the memory baseline)
    if spec["variant"] == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        # the distillation term alone (weight_hard_loss=0), as the other variants; every other option its default
        liger_loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=TRL_BETA[name],
                                             temperature=temperature)

        def liger():  # Liger's chunked JSD (beta 0: forward KL, 1: reverse KL)
            loss = liger_loss(hidden, weight, target_hidden, target_weight, labels)
            loss.backward()
            return loss

        variants["liger"] = liger
    run = variants[spec["variant"]]
    if spec.get("warm"):  # one call first (Liger compiles its chunk function on the first), then the measured one
        run()
        hidden.grad = weight.grad = None
        reset_peak_rss()
    rss_before = rss_bytes()
    start = time.perf_counter()
    loss = run()
    seconds = time.perf_counter() - start
    peak = (peak_rss_since_reset_bytes() if spec.get("warm") else peak_rss_bytes()) - rss_before
    flops = 2 * valid * vocab * (3 * hs + ht)  # student fwd + teacher fwd + dX + dW, useful tokens only
    return {"seconds": seconds, "peak_mb": peak / 2**20, "loss": float(loss.detach()), "gflops": flops / seconds / 1e9}


# ----------------------------------------------------------------------------- driver side
def _measure(spec: dict) -> dict:
    """One measurement in a fresh process (``{"failed": "OOM"}`` if the naive path exceeded memory)."""
    return run_worker(__file__, spec)


def _grid(args) -> list[dict]:
    grid = []
    for vocab in [] if args.mixed_hidden_only else args.vocab:
        for divergence in args.divergences:
            for temperature in args.temperatures:
                grid.append(dict(n=args.tokens, vocab=vocab, hs=args.hidden, ht=args.hidden, ignored=0.1,
                                 divergence=divergence, temperature=temperature, fused_only=False))
    if args.mixed_hidden:  # a teacher wider than the student: Hs=512, Ht=1024, at T=1
        for divergence in args.divergences:
            grid.append(dict(n=args.tokens, vocab=args.vocab[0], hs=512, ht=1024, ignored=0.1,
                             divergence=divergence, temperature=1.0, fused_only=False))
    for vocab in args.fused_only_vocab:
        grid.append(dict(n=args.tokens, vocab=vocab, hs=args.hidden, ht=args.hidden, ignored=0.1,
                         divergence="forward_kl", temperature=1.0, fused_only=True))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512, help="Hs = Ht of the main grid")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--fused-only-vocab", type=int, nargs="*", default=[256000])
    parser.add_argument("--divergences", nargs="+", default=list(DIVERGENCES), choices=list(DIVERGENCES))
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--no-mixed-hidden", dest="mixed_hidden", action="store_false",
                        help="skip the Hs=512, Ht=1024 rows")
    parser.add_argument("--mixed-hidden-only", action="store_true", help="only the Hs=512, Ht=1024 rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-mb", type=float, nargs="*", default=[],
                        help="only the fused path's share of matmul throughput (warm) at each of these "
                             "memory_budget_mb (and the default, 128), at each --vocab, for each --divergences, T=1")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--peers", action="store_true",
                        help="only TRL 1.16's chunked distillation loss against the fused path (forward KL, reverse "
                             "KL, JSD), at each --vocab, T=1")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.peers:
        peers(args)
        return
    if args.budget_mb:
        budgets(args)
        return

    raw = []
    matmul_cache: dict[tuple, float] = {}
    header = ("| V | Hs/Ht | divergence | T | naive s | fused s | speed-up | naive MB | fused MB | memory ratio "
              "| fused GFLOP/s | % of matmul | loss rel. diff |")
    print(header)
    print("|" + "---|" * 13)
    for spec in _grid(args):
        shape_key = (spec["n"], spec["vocab"], spec["hs"])
        if shape_key not in matmul_cache:
            matmul_cache[shape_key] = statistics.median(
                _measure({**spec, "variant": "matmul"})["gflops"] for _ in range(args.repeats))
        runs = {"naive": [], "fused": []}
        for _ in range(args.repeats):  # interleaved
            for variant in ("fused",) if spec["fused_only"] else ("naive", "fused"):
                runs[variant].append(_measure({**spec, "variant": variant}))
                if "failed" in runs[variant][-1]:
                    spec["fused_only"], runs[variant] = True, []  # the naive path cannot run here: stop trying
        raw.append({"spec": spec, "runs": runs, "matmul_gflops": matmul_cache[shape_key]})
        med = {v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mb", "gflops", "loss")}
               for v, rs in runs.items() if rs}
        spread = {v: (min(r["peak_mb"] for r in rs), max(r["peak_mb"] for r in rs)) for v, rs in runs.items() if rs}
        fused, naive = med["fused"], med.get("naive")
        missing = "OOM" if spec["fused_only"] and spec["vocab"] not in args.fused_only_vocab else "-"
        cells = [spec["vocab"], f"{spec['hs']}/{spec['ht']}", spec["divergence"], spec["temperature"],
                 f"{naive['seconds']:.2f}" if naive else missing, f"{fused['seconds']:.2f}",
                 f"{naive['seconds'] / fused['seconds']:.2f}x" if naive else "-",
                 f"{naive['peak_mb']:.0f} ({spread['naive'][0]:.0f}-{spread['naive'][1]:.0f})" if naive else missing,
                 f"{fused['peak_mb']:.0f} ({spread['fused'][0]:.0f}-{spread['fused'][1]:.0f})",
                 f"{naive['peak_mb'] / fused['peak_mb']:.1f}x" if naive else "-",
                 f"{fused['gflops']:.0f}", f"{100 * fused['gflops'] / matmul_cache[shape_key]:.0f}%",
                 f"{abs(naive['loss'] - fused['loss']) / abs(naive['loss']):.1e}" if naive else "-"]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    print("\nplain fp32 matmul (N x Hs) @ (Hs x V), GFLOP/s: "
          + ", ".join(f"V={k[1]}: {v:.0f}" for k, v in matmul_cache.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(raw, handle, indent=1)


def budgets(args) -> None:
    """The fused path's throughput against a plain fp32 matmul of the student's shape at larger
    chunk budgets (``memory_budget_mb``: fewer, taller chunks; the weight gradient, read and
    written once per chunk, costs less), with its peak memory, warm. Each fused run is paired
    with a matmul run right after it (this machine's load drifts over minutes), and the share is
    the median over ``--repeats`` of the pairs' ratios."""
    print("| V | divergence | memory_budget_mb | seconds | GFLOP/s | % of matmul | peak MB |\n|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        base = {"n": args.tokens, "vocab": vocab, "hs": args.hidden, "ht": args.hidden, "temperature": 1.0,
                "ignored": 0.1, "divergence": "forward_kl"}
        matmuls = []
        for name in args.divergences:
            for budget in [None, *[b for b in args.budget_mb if b != 128]]:
                runs, shares = [], []
                for _ in range(args.repeats):
                    runs.append(_measure({**base, "divergence": name, "variant": "fused", "warm": True,
                                          "budget_mb": budget}))
                    matmuls.append(_measure({**base, "variant": "matmul"})["gflops"])
                    shares.append(runs[-1]["gflops"] / matmuls[-1])
                med = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "gflops", "peak_mb")}
                print(f"| {vocab} | {name} | {budget or '128 (default)'} | {med['seconds']:.2f} | {med['gflops']:.0f} | "
                      f"{100 * statistics.median(shares):.0f}% | {med['peak_mb']:.0f} |", flush=True)
        print(f"plain fp32 matmul at V={vocab}: {statistics.median(matmuls):.0f} GFLOP/s (median of {len(matmuls)}, "
              f"range {min(matmuls):.0f}-{max(matmuls):.0f})")


def peers(args) -> None:
    """The peers' own chunked distillation kernels against the fused path, each warm (one call
    first, then the measured call and its peak memory; Liger compiles on its first call), variants
    interleaved, medians of ``--repeats``:

    - TRL 1.16's ``_chunked_divergence_loss`` (what its DistillationTrainer calls; on a CPU, its
      torch path, which projects every position, ignored ones included);
    - Liger-Kernel 0.8.5's ``LigerFusedLinearJSDLoss`` (pure torch, ``torch.compile``-d chunks by
      default; ``pip install liger-kernel==0.8.5 --no-deps``), the soft loss alone.

    The speed-up and memory ratio are the peer's over the fused path's."""
    try:
        import liger_kernel  # noqa: F401

        variants = ("trl", "liger", "fused")
    except ImportError:
        print("Liger-Kernel is not installed (pip install liger-kernel==0.8.5 --no-deps): TRL only\n")
        variants = ("trl", "fused")
    print("| V | divergence | library | seconds | speed-up of fused | peak MB | fused uses less by | loss rel. diff |\n"
          "|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        for name in [d for d in args.divergences if d in TRL_BETA]:
            spec = {"n": args.tokens, "vocab": vocab, "hs": args.hidden, "ht": args.hidden, "divergence": name,
                    "temperature": 1.0, "ignored": 0.1, "warm": True}
            runs: dict = {variant: [] for variant in variants}
            for _ in range(args.repeats):
                for variant in runs:
                    runs[variant].append(_measure({**spec, "variant": variant}))
            med = {v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mb", "loss")}
                   for v, rs in runs.items()}
            fused = med["fused"]
            for variant in variants:
                m = med[variant]
                print(f"| {vocab} | {name} | {variant} | {m['seconds']:.2f} | {m['seconds'] / fused['seconds']:.2f}x | "
                      f"{m['peak_mb']:.0f} | {m['peak_mb'] / fused['peak_mb']:.1f}x | "
                      f"{abs(m['loss'] - fused['loss']) / abs(fused['loss']):.1e} |", flush=True)


if __name__ == "__main__":
    main()
