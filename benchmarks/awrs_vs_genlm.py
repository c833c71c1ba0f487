"""Benchmark: divreg's AWRS against genlm-control 0.4.1's ``AWRS`` (the reference implementation of
Lipkin et al., 2025, arXiv 2504.05410), on the same tiny model, the same constraint and the same
number of tokens.

Measured, for each library:

- **one token**: the AWRS draw of one token after a fixed context, seconds per draw (median over
  the draws) and constraint calls per draw; divreg: ``awrs(log_probs, ...)`` on the model's
  log-probabilities, computed once; genlm-control: ``await AWRS.sample(context)``, whose
  language-model row comes from genlm-backend's output cache after the first draw (the time of
  fetching that cached row, ``PromptedLLM.logw_next``, is reported on its own);
- **SMC**: ``smc(..., sampler="awrs", ess_threshold=0)`` in divreg and ``AWRS.smc(...,
  ess_threshold=0)`` in genlm-control (importance sampling, no resampling), the same particles and
  at most the same number of tokens (divreg's ``max_tokens`` leaves EOS out, genlm's counts it:
  genlm is given one more), seconds per generated token (EOS included) with the model's forward
  passes, median over runs (and all runs' seconds over all their tokens), constraint calls per token
  and the model's forward passes per run;
- **distribution**: the tokens drawn after each of ``CONTEXTS`` against the exact target, enumerated:
  :math:`p(x|ctx)\\,1[ctx + x \\text{ allowed}] / Z` with p the model's next-token distribution (after
  the BOS prompt and the context) and Z the allowed mass. Total variation distance (with the
  distance expected from as many i.i.d. draws of the target, the noise floor), a chi-square
  goodness-of-fit p-value (bins of expected count < 5 pooled), the share of draws on refused
  tokens (must be 0), and the mean AWRS weight over Z (both weights are unbiased: about 1).

The constraint, defined once here and called by both libraries through the same two functions
(``words_prefix``, ``words_complete`` on the output's bytes): the output is one or more words of
``ALLOWED`` separated by single spaces. Constraint calls are counted inside those functions, so
both libraries are counted the same way: one call per token tested (``prefix(context + token)``,
or ``complete(context)`` for EOS); calls of ``prefix`` on the empty output are counted apart
(genlm-control's SMC asks for each particle's start weight; divreg's never does). genlm-control's
condition gets ``logw_eos = complete`` (one call where the default evaluates the whole next-token
vector) for the EOS it forces at ``max_tokens``; divreg's forced EOS is one call as well. Both use
genlm-control's estimator rule (divreg ``estimator="auto"``: geometric when the top probability
is at least 2/3, else recursive), ``max_accepts=2`` and no ``max_rejects``.

The model (no download): a byte-level BPE tokenizer (about 370 tokens, trained here on generated
text of 25 lowercase words and a few other strings) and a 2-layer GPT-2 of width 64 trained on that
text for ``--train-steps`` steps, saved to ``<output>/awrs_vs_genlm/model`` (built once), which both
libraries load. divreg runs in this interpreter's environment, genlm-control in ``--genlm-python``
(a venv of its own; without genlm-control there, its side is skipped), each in its own worker
process with ``torch.set_num_threads(--threads)``. SMC times vary by about 20% from one invocation
to the next on a busy 2-core machine; the one-token times less.

    .venv/bin/python benchmarks/awrs_vs_genlm.py --quick     # writes outputs/benchmarks/awrs_vs_genlm.json
    .venv/bin/python benchmarks/awrs_vs_genlm.py --samples 20000 --genlm-python /path/to/venv/bin/python

genlm-control pins its own dependencies (genlm-backend, an older transformers): ``make genlm``
installs it in ``.venv-genlm``, the default ``--genlm-python``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

HERE = os.path.abspath(__file__)
GENLM_PYTHON = ".venv-genlm/bin/python"  # `make genlm` builds it
GENLM_INSTALL = "make genlm (a venv of its own: pip install torch==2.13.0, then genlm-control==0.4.1)"
EOS_TEXT = "<|endoftext|>"
# The model's training text: these words (90%) and a few strings the constraint refuses.
WORDS = ("apple", "apply", "ample", "banana", "band", "bandit", "can", "candle", "candy", "dog", "door", "dorm",
         "east", "easy", "eat", "fig", "fight", "grape", "green", "house", "hose", "ice", "idle", "jam", "joke")
OTHERS = ("The", "Cat", "x=1;", "42", "!", "?", "Hello,", "World.")
# The constraint: one or more of these words, separated by single spaces.
ALLOWED = (b"apple", b"band", b"bandit", b"candle", b"candy", b"dog", b"door", b"east", b"fig", b"grape")
# Contexts (text after the BOS prompt, tokenized by the tokenizer) of the distribution check: the first
# token; after "do", a token the model rarely ends a word with (allowed mass about 7e-5: AWRS's hard
# case, about 125 calls a draw); after "apple" (a space and a word, or EOS).
CONTEXTS = ("", "do", "apple")


# ----------------------------------------------------------------------------------------------
# The constraint, shared by both libraries
# ----------------------------------------------------------------------------------------------
def words_prefix(text: bytes) -> bool:
    """Can ``text`` be extended to words of ALLOWED separated by single spaces?"""
    *finished, last = text.split(b" ")
    return all(word in ALLOWED for word in finished) and any(word.startswith(last) for word in ALLOWED)


def words_complete(text: bytes) -> bool:
    """Is ``text`` one or more words of ALLOWED separated by single spaces?"""
    return all(word in ALLOWED for word in text.split(b" "))


class Counted:
    """``words_prefix`` and ``words_complete`` with call counts (``start``: prefix of the empty output)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix_calls = self.complete_calls = self.start_calls = 0

    def prefix(self, text: bytes) -> bool:
        if text:
            self.prefix_calls += 1
        else:
            self.start_calls += 1
        return words_prefix(text)

    def complete(self, text: bytes) -> bool:
        self.complete_calls += 1
        return words_complete(text)

    @property
    def calls(self) -> int:
        """Calls on a token (the start calls left out)."""
        return self.prefix_calls + self.complete_calls


# ----------------------------------------------------------------------------------------------
# The model (built by the parent, in divreg's environment)
# ----------------------------------------------------------------------------------------------
def _corpus(lines: int, seed: int):
    import random

    rng = random.Random(seed)
    for _ in range(lines):
        yield " ".join(rng.choice(WORDS) if rng.random() < 0.9 else rng.choice(OTHERS)
                       for _ in range(rng.randint(3, 12)))


def build_model(folder: str, train_steps: int, seed: int, threads: int) -> str:
    """Tokenizer and trained GPT-2 in ``folder`` (kept when built before with the same settings)."""
    settings = {"train_steps": train_steps, "seed": seed, "vocab_size": 400, "width": 64, "layers": 2}
    stamp = os.path.join(folder, "build.json")
    if os.path.isfile(stamp):
        with open(stamp) as handle:
            if json.load(handle) == settings:
                return folder
    import random

    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)  # the full 256-byte alphabet (genlm-backend needs it)
    bpe.train_from_iterator(list(_corpus(3000, seed)), vocab_size=settings["vocab_size"], min_frequency=2,
                            special_tokens=[EOS_TEXT], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS_TEXT, eos_token=EOS_TEXT)
    tokenizer.save_pretrained(folder)
    eos = tokenizer.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=settings["width"],
                                       n_layer=settings["layers"], n_head=2, bos_token_id=eos, eos_token_id=eos))
    data = [tokenizer.encode(line) + [eos] for line in _corpus(2000, seed + 1)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(train_steps):
        batch = random.Random(step).sample(data, 16)
        length = max(map(len, batch))
        ids = torch.tensor([[eos] + row + [eos] * (length - len(row)) for row in batch])
        labels = ids.clone()
        for i, row in enumerate(batch):
            labels[i, len(row) + 1:] = -100  # no loss on the padding
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    with open(stamp, "w") as handle:
        json.dump(settings, handle)
    return folder


def _count_forwards(model) -> list:
    """A one-element list counting the model's forward passes."""
    count = [0]
    model.register_forward_hook(lambda *args: count.__setitem__(0, count[0] + 1))
    return count


def _load(folder: str, threads: int):
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.disable_progress_bar()
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


def exact_targets(folder: str, contexts: Sequence[Sequence[int]], threads: int) -> list:
    """For each context: the model's next-token probabilities (float64), the allowed-token mask and
    token 0..V-1's bytes (divreg's ``token_texts``)."""
    import torch

    from divreg.generation import TransformersLM, token_texts

    model, tokenizer = _load(folder, threads)
    texts, eos = token_texts(tokenizer), tokenizer.eos_token_id
    lm = TransformersLM(model, [tokenizer.bos_token_id])
    out = []
    for ids in contexts:
        probs = lm.next_log_probs(ids).double().exp()
        prefix = b"".join(texts[i] for i in ids)
        mask = torch.tensor([words_complete(prefix) if t == eos else words_prefix(prefix + texts[t])
                             for t in range(len(texts))])
        out.append((probs, mask))
    return out


# ----------------------------------------------------------------------------------------------
# Workers: one process per library
# ----------------------------------------------------------------------------------------------
def divreg_worker(spec: dict) -> dict:
    import torch

    import divreg
    from divreg.generation import Predicate, TransformersLM, awrs, smc, token_texts

    model, tokenizer = _load(spec["model"], spec["threads"])
    texts, eos = token_texts(tokenizer), tokenizer.eos_token_id
    counted = Counted()

    def text(ids) -> bytes:
        return b"".join(texts[i] for i in ids)

    constraint = Predicate(lambda ids: counted.prefix(text(ids)), lambda ids: counted.complete(text(ids)),
                           eos_token_id=eos)
    forwards = _count_forwards(model)
    lm = TransformersLM(model, [tokenizer.bos_token_id])
    one_token = []
    for ids in spec["contexts"]:
        log_probs = lm.next_log_probs(ids)
        generator = torch.Generator().manual_seed(spec["seed"])
        context = tuple(ids)

        def allowed(token: int) -> bool:
            return constraint(context, token)

        for _ in range(spec["warmup"]):
            awrs(log_probs, allowed, estimator="auto", generator=generator)
        tokens, log_weights, calls, seconds = [], [], [], []
        for _ in range(spec["samples"]):
            before = counted.calls
            start = time.perf_counter()
            draw = awrs(log_probs, allowed, estimator="auto", generator=generator)
            seconds.append(time.perf_counter() - start)
            assert draw.constraint_calls == counted.calls - before
            tokens.append(-1 if draw.token is None else int(draw.token))
            log_weights.append(draw.log_weight)
            calls.append(draw.constraint_calls)
        one_token.append({"tokens": tokens, "log_weights": log_weights, "calls": calls, "seconds": seconds})
    runs = []
    for run in range(-1, spec["runs"]):  # run -1: warm-up
        counted.reset()
        forwards[0] = 0
        generator = torch.Generator().manual_seed(spec["seed"] + run)
        start = time.perf_counter()
        result = smc(lm, constraint, spec["particles"], max_tokens=spec["max_tokens"], sampler="awrs",
                     estimator="auto", ess_threshold=0.0, generator=generator)
        seconds = time.perf_counter() - start
        assert result.constraint_calls == counted.calls
        if run >= 0:
            runs.append({"seconds": seconds, "tokens": result.tokens, "calls": counted.calls, "forwards": forwards[0],
                         "start_calls": counted.start_calls,
                         "texts": [text(y).decode("utf-8", "replace") for y in result.sequences]})
    return {"library": "divreg", "version": divreg.__version__, "torch": torch.__version__,
            "one_token": one_token, "smc": runs}


async def _genlm_worker(spec: dict) -> dict:
    import importlib.metadata

    import numpy as np
    import torch
    from genlm.backend.llm import AsyncTransformer
    from genlm.control import AWRS, Potential, PromptedLLM

    model, tokenizer = _load(spec["model"], spec["threads"])
    eos = tokenizer.eos_token_id
    forwards = _count_forwards(model)
    # batch_size: the particles' queries in one forward; timeout 0: no 20 ms wait for a fuller batch
    backend = AsyncTransformer(model, tokenizer, batch_size=spec["particles"], timeout=0.0)
    llm = PromptedLLM(backend, prompt_ids=[tokenizer.bos_token_id])
    counted = Counted()

    class Words(Potential):
        """The shared constraint as a Boolean potential (log weight 0 or -inf) on the LLM's tokens."""

        def __init__(self) -> None:
            super().__init__(llm.vocab, tables=llm.tables)

        async def prefix(self, context) -> float:
            return 0.0 if counted.prefix(b"".join(context)) else -math.inf

        async def complete(self, context) -> float:
            return 0.0 if counted.complete(b"".join(context)) else -math.inf

        async def logw_eos(self, context) -> float:
            # complete - prefix, the prefix of a live particle being allowed (0): one call, where
            # Potential.logw_eos would evaluate logw_next, i.e. prefix on every token
            return await self.complete(context)

    condition = Words()
    by_id = {token.token_id: token for token in llm.vocab}

    def token_id(token) -> int:
        return eos if token is llm.eos else int(token.token_id)

    one_token, fetch = [], []
    for ids in spec["contexts"]:
        context = [by_id[i] for i in ids]
        sampler = AWRS(llm, condition, seed=spec["seed"])
        for _ in range(spec["warmup"]):
            await sampler.sample(context)
        for _ in range(20):
            start = time.perf_counter()
            await llm.logw_next(context)
            fetch.append(time.perf_counter() - start)
        tokens, log_weights, calls, seconds = [], [], [], []
        for _ in range(spec["samples"]):
            before = counted.calls
            start = time.perf_counter()
            token, log_weight, _ = await sampler.sample(context)
            seconds.append(time.perf_counter() - start)
            tokens.append(token_id(token) if log_weight > -math.inf else -1)
            log_weights.append(float(log_weight))
            calls.append(counted.calls - before)
        one_token.append({"tokens": tokens, "log_weights": log_weights, "calls": calls, "seconds": seconds})
    runs = []
    for run in range(-1, spec["runs"]):  # run -1: warm-up
        backend.clear_cache()  # each run from an empty cache, as divreg's
        sampler = AWRS(llm, condition, seed=spec["seed"] + run + 1000)
        counted.reset()
        forwards[0] = 0
        start = time.perf_counter()
        result = await sampler.smc(n_particles=spec["particles"], ess_threshold=0.0,
                                   max_tokens=spec["max_tokens"] + 1)  # genlm's max_tokens counts EOS
        seconds = time.perf_counter() - start
        if run >= 0:
            runs.append({"seconds": seconds, "tokens": sum(len(c) for c in result.contexts), "calls": counted.calls,
                         "forwards": forwards[0],
                         "start_calls": counted.start_calls,
                         "texts": [b"".join(t for t in c if t is not llm.eos).decode("utf-8", "replace")
                                   for c in result.contexts],
                         "dead": int(np.isneginf(result.log_weights).sum())})
    return {"library": "genlm-control", "version": importlib.metadata.version("genlm-control"),
            "torch": torch.__version__, "one_token": one_token, "smc": runs,
            "cached_logw_next_seconds": statistics.median(fetch),
            "masks": [[token_id(t) for t in llm.vocab_eos
                       if (words_complete(b"".join(by_id[i] for i in ids)) if t is llm.eos
                           else words_prefix(b"".join(by_id[i] for i in ids) + bytes(t)))]
                      for ids in spec["contexts"]]}


def worker(spec: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    if spec["library"] == "divreg":
        return divreg_worker(spec)
    import asyncio

    return asyncio.run(_genlm_worker(spec))


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_worker(python: str, spec: dict) -> dict:
    """``python this-script --worker spec``; its last stdout line as JSON."""
    result = subprocess.run([python, HERE, "--worker", json.dumps(spec)], capture_output=True, text=True,
                            env=_env(spec["threads"]))
    if result.returncode != 0:
        raise RuntimeError(f"{spec['library']} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def genlm_missing(python: str) -> Optional[str]:
    """None when ``python`` imports genlm.control, else why not."""
    try:
        result = subprocess.run([python, "-c", "import genlm.control"], capture_output=True, text=True,
                                env=_env(1), timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["failed"])[-1]


# ----------------------------------------------------------------------------------------------
# Statistics (parent)
# ----------------------------------------------------------------------------------------------
def compare(tokens: Sequence[int], log_weights: Sequence[float], probs, mask, generator) -> dict:
    """Draws against the exact target p * mask / Z: TV (and its i.i.d. noise floor), chi-square
    p-value, share of draws on refused tokens or dead ends, mean weight / Z (and its standard error)."""
    import torch

    n, size = len(tokens), probs.numel()
    allowed = probs * mask
    z = float(allowed.sum())
    target = allowed / z
    counts = torch.zeros(size + 1, dtype=torch.float64)  # the last bin: dead ends (no token)
    counts.index_add_(0, torch.tensor([t if t >= 0 else size for t in tokens]), torch.ones(n, dtype=torch.float64))
    refused = float(counts[:size][~mask].sum() + counts[size]) / n
    empirical = counts[:size] / n
    tv = 0.5 * float((empirical - target).abs().sum() + counts[size] / n)
    floor = statistics.mean(
        0.5 * float((torch.bincount(torch.multinomial(target, n, replacement=True, generator=generator),
                                    minlength=size) / n - target).abs().sum()) for _ in range(200))
    # chi-square on the allowed tokens, the ones expected fewer than 5 times pooled into one bin
    expected, observed = n * target[mask], counts[:size][mask]
    small = expected < 5
    expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    observed = torch.cat([observed[~small], observed[small].sum().view(1)])
    if float(expected[-1]) == 0:
        expected, observed = expected[:-1], observed[:-1]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = max(expected.numel() - 1, 1)
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                            torch.tensor(statistic / 2, dtype=torch.float64)))
    ratio = torch.tensor(log_weights, dtype=torch.float64).sub(math.log(z)).exp()
    return {"allowed_mass": z, "allowed_tokens": int(mask.sum()), "tv": tv, "tv_iid_floor": floor,
            "chi2": statistic, "chi2_dof": dof, "chi2_p": p_value, "refused_share": refused,
            "mean_weight_over_z": float(ratio.mean()), "mean_weight_over_z_se": float(ratio.std() / math.sqrt(n)),
            "empirical": empirical.tolist()}


def summarize(result: dict, targets: list, generator) -> dict:
    draws = result["one_token"]
    per_context = [compare(d["tokens"], d["log_weights"], probs, mask, generator)
                   for d, (probs, mask) in zip(draws, targets)]
    for d, row in zip(draws, per_context):
        row["seconds_per_draw"] = statistics.median(d["seconds"])
        row["calls_per_draw"] = statistics.mean(d["calls"])
    runs = result["smc"]
    return {
        "library": result["library"], "version": result["version"], "torch": result["torch"],
        "smc_seconds_per_token": statistics.median(r["seconds"] / r["tokens"] for r in runs),
        "smc_calls_per_token": sum(r["calls"] for r in runs) / sum(r["tokens"] for r in runs),
        "smc_total_seconds_per_token": sum(r["seconds"] for r in runs) / sum(r["tokens"] for r in runs),
        "smc_forwards_per_run": statistics.mean(r["forwards"] for r in runs),
        "smc_start_calls_per_run": statistics.mean(r["start_calls"] for r in runs),
        "smc_tokens_per_run": statistics.mean(r["tokens"] for r in runs),
        "smc_examples": runs[0]["texts"], "contexts": per_context,
        "smc_runs": [{key: r[key] for key in ("seconds", "tokens", "calls", "start_calls", "forwards")} for r in runs],
        **({"cached_logw_next_seconds": result["cached_logw_next_seconds"]}
           if "cached_logw_next_seconds" in result else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2,000 draws per context, 200 SMC runs (about a minute)")
    parser.add_argument("--samples", type=int, help="one-token draws per context (default 2,000 with --quick, "
                                                    "else 20,000)")
    parser.add_argument("--runs", type=int, help="SMC runs per library (default 200 with --quick, else 1,000)")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens before EOS is forced (EOS not counted)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both workers (a 64-wide model "
                                                               "is fastest on 1)")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the tiny model (0: random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--genlm-python", default=GENLM_PYTHON, help="an interpreter with genlm-control installed")
    parser.add_argument("--output", default=os.path.join("outputs", "benchmarks"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    samples = args.samples or (2000 if args.quick else 20000)
    runs = args.runs or (200 if args.quick else 1000)
    import torch
    import transformers

    start = time.perf_counter()
    folder = build_model(os.path.abspath(os.path.join(args.output, "awrs_vs_genlm", "model")), args.train_steps,
                         args.seed, args.threads)
    _, tokenizer = _load(folder, args.threads)
    contexts = [tokenizer.encode(text) for text in CONTEXTS]
    targets = exact_targets(folder, contexts, args.threads)
    spec = {"model": folder, "contexts": contexts, "samples": samples, "warmup": 20, "runs": runs,
            "particles": args.particles, "max_tokens": args.max_tokens, "threads": args.threads, "seed": args.seed}
    missing = genlm_missing(args.genlm_python)
    if missing:
        print(f"skipping genlm-control: {args.genlm_python} cannot import genlm.control ({missing}); install it "
              f"with: {GENLM_INSTALL}")
    generator = torch.Generator().manual_seed(args.seed)
    results = [summarize(run_worker(sys.executable, {**spec, "library": "divreg"}), targets, generator)]
    if not missing:
        raw = run_worker(args.genlm_python, {**spec, "library": "genlm-control"})
        masks_agree = all(sorted(m) == torch.nonzero(mask).flatten().tolist()
                          for m, (_, mask) in zip(raw["masks"], targets))
        results.append(summarize(raw, targets, generator))
        results[-1]["masks_agree_with_divreg"] = masks_agree
        if not masks_agree:
            print("WARNING: genlm-control's tokens decode differently: the constraint's masks differ")
    vocab = targets[0][0].numel()

    print(f"\nAWRS, divreg {results[0]['version']} vs "
          f"{'genlm-control ' + results[1]['version'] if len(results) > 1 else 'genlm-control (skipped)'}; "
          f"GPT-2 2x64 ({args.train_steps} training steps), V = {vocab}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {args.threads} thread(s)")
    print(f"constraint: words of {{{', '.join(w.decode() for w in ALLOWED)}}} separated by single spaces")
    print(f"\nSMC, {args.particles} particles, <= {args.max_tokens} tokens + EOS, no resampling; {runs} runs per "
          "library")
    print(f"{'library':<20} {'ms/token':>9} {'(total)':>8} {'calls/token':>12} {'tokens/run':>11} "
          f"{'forwards/run':>13} {'start calls/run':>16}")
    for r in results:
        print(f"{r['library'] + ' ' + r['version']:<20} {1000 * r['smc_seconds_per_token']:>9.3f} "
              f"{1000 * r['smc_total_seconds_per_token']:>8.3f} {r['smc_calls_per_token']:>12.2f} "
              f"{r['smc_tokens_per_run']:>11.1f} {r['smc_forwards_per_run']:>13.1f} "
              f"{r['smc_start_calls_per_run']:>16.0f}")
    print("ms/token: median over runs of a run's seconds / its tokens (EOS included; the model's forward passes "
          "included); (total): all runs' seconds / all their tokens; calls/token: constraint calls on tokens, all "
          "runs (the start-weight calls, prefix of the empty output, apart); forwards: the model's forward passes")
    if len(results) > 1:
        print(f"genlm-control's one-token time includes fetching the cached LM row (PromptedLLM.logw_next alone: "
              f"{1000 * results[1]['cached_logw_next_seconds']:.3f} ms); constraint masks identical in both: "
              f"{results[1]['masks_agree_with_divreg']}")
    print(f"\none token after each context vs the exact target p(x|ctx) 1[allowed] / Z ({samples} draws per context "
          "and library; ms/draw: median; calls: mean per draw)")
    print(f"{'context':<9} {'Z':>8} {'allowed':>7} | {'library':<14} {'TV':>7} {'iid TV':>7} {'chi2 p':>7} "
          f"{'refused':>7} {'E[w]/Z':>13} {'ms/draw':>8} {'calls':>6}")
    for i, text in enumerate(CONTEXTS):
        for j, r in enumerate(results):
            c = r["contexts"][i]
            head = f"{text!r:<9} {c['allowed_mass']:>8.2g} {c['allowed_tokens']:>7}" if j == 0 else " " * 26
            print(f"{head} | {r['library']:<14} {c['tv']:>7.4f} {c['tv_iid_floor']:>7.4f} {c['chi2_p']:>7.3f} "
                  f"{c['refused_share']:>7.4f} {c['mean_weight_over_z']:>6.3f}+-{c['mean_weight_over_z_se']:.3f} "
                  f"{1000 * c['seconds_per_draw']:>8.3f} {c['calls_per_draw']:>6.2f}")
    if len(results) > 1:
        between = [0.5 * sum(abs(a - b) for a, b in zip(results[0]["contexts"][i]["empirical"],
                                                        results[1]["contexts"][i]["empirical"]))
                   for i in range(len(CONTEXTS))]
        print("TV between the two libraries' draws: " + ", ".join(f"{t!r}: {d:.4f}" for t, d in zip(CONTEXTS, between)))
    for r in results:
        print(f"{r['library']} SMC outputs (run 1): {r['smc_examples']}")
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "awrs_vs_genlm.json")
    for r in results:
        for c in r["contexts"]:
            del c["empirical"]
    with open(path, "w") as handle:
        json.dump({"settings": {**{k: v for k, v in spec.items() if k != "model"}, "context_texts": CONTEXTS,
                                "train_steps": args.train_steps, "vocab": vocab,
                                "allowed_words": [w.decode() for w in ALLOWED], "torch": torch.__version__,
                                "transformers": transformers.__version__},
                   "genlm_skipped": missing, "results": results}, handle, indent=2)
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
