"""Benchmark: constraint calls per generated token and wall time vs vocabulary size, token masking
vs AWRS (Lipkin et al., 2025, arXiv 2504.05410), on a tiny model with a regex constraint.

Set-up (no download): a vocabulary of V tokens whose texts are random strings of 1 to 5
characters over ``0-9 . a-j`` and a space (EOS last); a 2-layer Llama of width 64 with that
vocabulary, built from a config; the constraint ``Regex(r"[0-9]+(\\.[0-9]+)?( [0-9]+(\\.[0-9]+)?)*")``
(a list of numbers); SMC with 4 particles, 12 tokens. Two regimes for the model:

- ``aligned``: the random model's logits plus a bias on tokens made of the pattern's characters
  (digits, ``.``, space), standing for a model that has learned the format (the allowed mass of
  the first token is printed);
- ``untrained``: the random model alone (most mass on refused tokens: AWRS's worst case).

Variants, each (variant, V, regime) in its own subprocess with ``torch.set_num_threads(2)``,
repeated, medians:

- ``masking``: the constraint on every token at every step (``smc(sampler="masking")``), through
  the same per-token check AWRS uses;
- ``awrs``: ``smc(sampler="awrs")`` (recursive estimator);
- ``index``: masking from outlines-core's precomputed ``Index`` (a regex compiled against the whole
  vocabulary once: its build time is printed separately, and the allowed set of each state is a
  lookup), the fast way to mask a regex; it cannot take an arbitrary Python predicate.

Time per token includes the model's forward pass (the same in every variant; the ``model`` column
is that part alone).

    python benchmarks/controlled_generation.py                       # V = 1k, 8k, 32k, 128k; 3 repeats
    python benchmarks/controlled_generation.py --vocab 1000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics

from _measure import run_worker

PATTERN = r"[0-9]+(\.[0-9]+)?( [0-9]+(\.[0-9]+)?)*"
VARIANTS = ("masking", "awrs", "index")


def _setup(vocab: int, regime: str):
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from divreg.generation import Regex, TransformersLM

    rng = random.Random(0)
    alphabet = "0123456789.abcdefghij "
    texts = [str(d) for d in range(10)] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(vocab - 11)] + ["<eos>"]
    eos = vocab - 1
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=128, max_position_embeddings=64,
                         bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    lm = TransformersLM(model, [eos])
    if regime == "aligned":
        formatted = torch.tensor([set(t) <= set("0123456789. ") for t in texts[:-1]] + [True])
        bias = torch.where(formatted, 6.0, 0.0)
        lm = _Biased(lm, bias)
    return lm, Regex(PATTERN, texts, eos_token_id=eos), texts


class _Biased:
    """log_softmax(log p + bias): a model nudged toward the format."""

    def __init__(self, lm, bias):
        self.lm, self.bias = lm, bias
        self.vocab_size, self.eos_token_id = lm.vocab_size, lm.eos_token_id

    def _tilt(self, log_probs):
        return (log_probs + self.bias).log_softmax(-1)

    def start(self, n):
        return self._tilt(self.lm.start(n))

    def advance(self, tokens):
        return self._tilt(self.lm.advance(tokens))

    def reorder(self, index):
        self.lm.reorder(index)

    def next_log_probs(self, ids):
        return self._tilt(self.lm.next_log_probs(ids))


def _index_smc(lm, texts, particles, max_tokens, generator):
    """Locally constrained SMC with masks from outlines-core's Index (weights: the local
    normalizers; no resampling). Returns (tokens generated, build seconds)."""
    import time

    import outlines_core
    import torch

    eos = lm.eos_token_id
    mapping: dict = {}
    for i, text in enumerate(texts[:-1]):
        mapping.setdefault(text, []).append(i)
    start = time.perf_counter()
    index = outlines_core.Index(PATTERN, outlines_core.Vocabulary(eos, mapping))
    build = time.perf_counter() - start
    guides = [outlines_core.Guide(index) for _ in range(particles)]
    done = [False] * particles
    log_probs, tokens = lm.start(particles), 0
    for step in range(max_tokens):
        chosen = []
        for i, guide in enumerate(guides):
            if done[i]:
                chosen.append(eos)
                continue
            allowed = torch.tensor(guide.get_tokens(), dtype=torch.long)
            local = log_probs[i, allowed].double()
            token = int(allowed[torch.multinomial((local - local.logsumexp(0)).exp(), 1, generator=generator)])
            tokens += 1
            if token == eos:
                done[i] = True
            else:
                guide.advance(token)
            chosen.append(token)
        if all(done):
            break
        log_probs = lm.advance(torch.tensor(chosen))
    return tokens, build


def _worker(spec: dict) -> dict:
    import time

    import torch

    from divreg.generation import smc

    torch.set_num_threads(2)
    lm, constraint, texts = _setup(spec["vocab"], spec["regime"])
    first = lm.start(1)[0].double().exp()
    allowed_mass = float(sum(first[t] for t in range(spec["vocab"]) if constraint((), t)))
    generator = torch.Generator().manual_seed(spec["seed"])
    model_time = time.perf_counter()
    lm.start(spec["particles"])
    for _ in range(spec["max_tokens"]):
        lm.advance(torch.full((spec["particles"],), 3))
    model_time = (time.perf_counter() - model_time) / (spec["particles"] * spec["max_tokens"])
    start = time.perf_counter()
    build = calls = None
    if spec["variant"] == "index":
        tokens, build = _index_smc(lm, texts, spec["particles"], spec["max_tokens"], generator)
    else:
        result = smc(lm, constraint, spec["particles"], max_tokens=spec["max_tokens"], sampler=spec["variant"],
                     generator=generator, ess_threshold=0.0)
        tokens, calls = result.tokens, result.constraint_calls
    seconds = time.perf_counter() - start
    return {"seconds_per_token": seconds / tokens, "calls_per_token": None if calls is None else calls / tokens,
            "build": build, "allowed_mass": allowed_mass, "model_per_token": model_time}


def _run(spec: dict) -> dict:
    return run_worker(__file__, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1000, 8000, 32000, 128000])
    parser.add_argument("--regimes", nargs="+", default=["aligned", "untrained"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    print(f"{'regime':>9} {'V':>7} {'allowed':>7} | {'calls/token':>23} | {'ms/token':>28} | {'model':>6} "
          f"{'index build':>11}")
    print(f"{'':>9} {'':>7} {'mass':>7} | {'masking':>9} {'awrs':>6} {'ratio':>6} | "
          f"{'masking':>8} {'awrs':>7} {'index':>6} {'m/a':>5} | {'ms':>6} {'ms':>11}")
    for regime in args.regimes:
        for vocab in args.vocab:
            runs = {v: [] for v in VARIANTS}
            for repeat in range(args.repeats):
                for variant in VARIANTS:  # interleaved
                    runs[variant].append(_run({"variant": variant, "vocab": vocab, "regime": regime, "seed": repeat,
                                               "particles": args.particles, "max_tokens": args.max_tokens}))

            def median(variant, key):
                return statistics.median(r[key] for r in runs[variant])

            calls = {v: median(v, "calls_per_token") for v in ("masking", "awrs")}
            ms = {v: 1000 * median(v, "seconds_per_token") for v in VARIANTS}
            print(f"{regime:>9} {vocab:>7} {runs['awrs'][0]['allowed_mass']:>7.3f} | {calls['masking']:>9.0f} "
                  f"{calls['awrs']:>6.1f} {calls['masking'] / calls['awrs']:>6.0f} | {ms['masking']:>8.1f} "
                  f"{ms['awrs']:>7.2f} {ms['index']:>6.2f} {ms['masking'] / ms['awrs']:>5.0f} | "
                  f"{1000 * median('awrs', 'model_per_token'):>6.2f} {1000 * median('index', 'build'):>11.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
