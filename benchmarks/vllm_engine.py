"""vLLM against the in-process paths, on the same model and inputs: teacher scoring (top-k log-probs
of every position, through the server vs a transformers forward + log_softmax + top-k) and
generation (the server, with the weight sync each round, vs transformers' ``generate`` as divreg
samples), in tokens per second.

The model: the engine benchmark's Llama of about 36M parameters with a 32,000-token BPE (built by
``benchmarks/engine.py``'s ``build_assets`` if absent). The server runs from the vLLM venv
(``make vllm``) with divreg's flags (:class:`divreg.serving.VLLMServer`), fp32, on 127.0.0.1.
Each measurement runs in its own worker process with the thread count set; the value is the
median over ``--repeats`` runs after one warm-up; the in-process and the server paths never run
at the same time (the machine has 2 cores: they would share them).

    .venv/bin/python benchmarks/vllm_engine.py            # writes outputs/benchmarks/vllm/vllm.json
    .venv/bin/python benchmarks/vllm_engine.py --quick

(Named vllm_engine, not vllm: a benchmarks/vllm.py would shadow the vllm package for every
script in this folder, and TRL probes for that package at import.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import run_worker  # noqa: E402

HERE = os.path.abspath(__file__)


def _inputs(tokenizer, count: int, length: int, seed: int = 0) -> list[list[int]]:
    """``count`` token sequences of ``length`` from the engine benchmark's texts."""
    import random

    with open(os.path.join("outputs", "benchmarks", "engine", "texts.jsonl")) as handle:
        texts = [json.loads(line)["text"] for line in handle]
    rng, sequences = random.Random(seed), []
    while len(sequences) < count:
        ids = tokenizer(rng.choice(texts))["input_ids"]
        if len(ids) >= length:
            start = rng.randrange(len(ids) - length + 1)
            sequences.append(ids[start:start + length])
    return sequences


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import AutoTokenizer

    from divreg.models import CausalLM, ModelSource, build_causal_lm, generate_examples

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    sequences = _inputs(tokenizer, spec["sequences"], spec["length"])
    needs_model = spec["kind"] in ("score-inprocess", "generate-hf", "generate-server")
    model = CausalLM(build_causal_lm(ModelSource(path=spec["model"]), tokenizer, 0), len(tokenizer)).eval() \
        if needs_model else None
    prompts = [s[: spec["prompt_length"]] for s in sequences[: spec["prompts"]]]
    times, tokens = [], 0
    for repeat in range(spec["repeats"] + 1):  # the first: warm-up
        started = time.perf_counter()
        if spec["kind"] == "score-inprocess":
            with torch.no_grad():
                for start in range(0, len(sequences), 16):
                    ids = torch.tensor(sequences[start:start + 16])
                    log_p = torch.log_softmax(model(ids, torch.ones_like(ids))[:, :-1].float(), -1)
                    top, _ = log_p.topk(spec["top_k"], -1)
                    torch.logsumexp(top, -1)
            tokens = sum(len(s) - 1 for s in sequences)
        elif spec["kind"] == "score-server":
            from divreg.serving import ServedTeacher

            teacher = ServedTeacher(spec["url"], spec["top_k"], tokenizer, batch_size=16)
            teacher.score(sequences)
            tokens = sum(len(s) - 1 for s in sequences)
        elif spec["kind"] == "generate-hf":
            examples = generate_examples(model, [p for p in prompts for _ in range(spec["copies"])], tokenizer,
                                         spec["new_tokens"], seed=repeat)
            tokens = sum(len(e.input_ids) - e.prompt_length for e in examples)
        else:  # generate-server: one RL round: sync the weights, then sample
            from divreg.serving import ServedSampler

            sampler = ServedSampler(spec["url"], tokenizer, os.path.join(spec["output"], "sync"))
            sampler.sync(model)
            samples = sampler.sample(prompts, spec["copies"], spec["new_tokens"], seed=repeat)
            tokens = sum(len(ids) for ids, _ in samples)
        if repeat:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"kind": spec["kind"], "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--quick", action="store_true", help="fewer sequences and repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=os.path.join("outputs", "benchmarks", "vllm"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from engine import build_assets

    from divreg.serving import VLLMServer

    model = build_assets(os.path.join("outputs", "benchmarks", "engine"))["model"]
    os.makedirs(args.output, exist_ok=True)
    base = {"model": model, "threads": args.threads, "top_k": 32, "length": 128, "prompt_length": 32,
            "sequences": 32 if args.quick else 128, "prompts": 4 if args.quick else 16, "copies": 4,
            "new_tokens": 32 if args.quick else 64, "repeats": 1 if args.quick else 3, "output": args.output}
    results = {}
    for kind in ("score-inprocess", "generate-hf"):
        results[kind] = run_worker(HERE, {**base, "kind": kind})
        print(json.dumps(results[kind]), flush=True)
    with VLLMServer(model, max_logprobs=64, max_model_len=512,
                    log_path=os.path.join(args.output, "server.log")) as server:
        for kind in ("score-server", "generate-server"):
            results[kind] = run_worker(HERE, {**base, "kind": kind, "url": server.url})
            print(json.dumps(results[kind]), flush=True)
    ratios = {"scoring": results["score-server"]["tokens_per_second"] / results["score-inprocess"]["tokens_per_second"],
              "generation": results["generate-server"]["tokens_per_second"] / results["generate-hf"]["tokens_per_second"]}
    with open(os.path.join(args.output, "vllm.json"), "w") as handle:
        json.dump({"settings": base, "results": results, "server_over_inprocess": ratios}, handle, indent=1)
    print("| path | in-process tokens/s | vLLM tokens/s | vLLM / in-process |\n|---|---|---|---|")
    for name, (ours, theirs) in {"teacher scoring (top-32)": ("score-server", "score-inprocess"),
                                 "generation (with the weight sync)": ("generate-server", "generate-hf")}.items():
        print(f"| {name} | {results[theirs]['tokens_per_second']:.0f} | {results[ours]['tokens_per_second']:.0f} | "
              f"{results[ours]['tokens_per_second'] / results[theirs]['tokens_per_second']:.2f}x |")


if __name__ == "__main__":
    main()
