"""The engine options measured on a real architecture: seconds per optimizer step and peak memory of
`divreg distill-lm`, `rl` and `preference` with fp32, bf16, bf16 + gradient checkpointing and
bf16 + LoRA (whose reference in rl and preference is the policy with its adapters off).

The model: a Llama-architecture causal LM of about 36M parameters (width 512, 6 layers, 8 heads,
MLP 1408, tied embeddings) with a 32,000-token byte-level BPE tokenizer trained on Python's own
standard-library sources, saved with save_pretrained to a folder that every run loads by path
(nothing downloaded; built once and kept under the output folder). Each (command, variant) runs
in its own process (``benchmarks/_measure.py``), with the thread count set; seconds per step is
the median of the intervals between consecutive optimizer steps after the first (one warm-up
step), measured by a global optimizer-step hook; peak memory is the worker's peak resident set
minus its resident set before the run (the model, data and every buffer of the run).

    .venv/bin/python benchmarks/engine.py                      # every command and variant (~15-25 min here)
    .venv/bin/python benchmarks/engine.py --commands rl --variants fp32 bf16-lora
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import peak_rss_bytes, rss_bytes, run_worker  # noqa: E402

VARIANTS = {
    "fp32": [],
    "bf16": ["precision=bf16"],
    "bf16-ckpt": ["precision=bf16", "gradient_checkpointing=true"],
    "bf16-lora": ["precision=bf16", "lora={r: 16}"],
}
REWARDS = '''
def brevity(prompts, completions, **kwargs):
    """A reward with TRL's signature: shorter completions score higher."""
    return [-len(c) / 100 for c in completions]
'''


def build_assets(folder: str, vocab_size: int = 32000) -> dict:
    """The model folder, the data files and the reward module (built once)."""
    os.makedirs(folder, exist_ok=True)
    model_dir = os.path.join(folder, "model")
    paths = {name: os.path.join(folder, name) for name in ("texts.jsonl", "prompts.jsonl", "pairs.jsonl")}
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        sources, size = [], 0
        for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)):
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            sources.append(text)
            size += len(text)
            if size > 8_000_000:
                break
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.train_from_iterator(sources, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=512, num_hidden_layers=6,
                                             num_attention_heads=8, num_key_value_heads=8, intermediate_size=1408,
                                             max_position_embeddings=1024, tie_word_embeddings=True,
                                             pad_token_id=0, eos_token_id=1))
        model.save_pretrained(model_dir)
        hf_tokenizer.save_pretrained(model_dir)
        with open(paths["texts.jsonl"], "w") as handle:
            for text in sources[:400]:
                handle.write(json.dumps({"text": text[:4000]}) + "\n")
        with open(paths["prompts.jsonl"], "w") as handle:
            for i, text in enumerate(sources[:200]):
                handle.write(json.dumps({"prompt": text[:300], "answer": str(i)}) + "\n")
        with open(paths["pairs.jsonl"], "w") as handle:
            for text in sources[:200]:
                handle.write(json.dumps({"prompt": text[:200], "chosen": text[200:300], "rejected": text[300:360]}) + "\n")
    with open(os.path.join(folder, "bench_rewards.py"), "w") as handle:
        handle.write(REWARDS)
    return {"model": model_dir, **paths, "folder": folder}


def command_line(command: str, assets: dict, out: str, steps: int) -> list[str]:
    model = assets["model"]
    common = [f"steps={steps}", f"eval_every={steps}", "checkpoint_every=0", "seeds=[0]", f"output_dir={out}",
              "overwrite=true"]
    if command == "distill-lm":
        return ["distill-lm", f"teacher.path={model}", f"student.path={model}", f"data={assets['texts.jsonl']}",
                "methods=[forward_kl]", "seq_len=256", "batch_size=8", "eval_examples=8", *common]
    if command == "rl":
        return ["rl", f"policy.path={model}", f"data={assets['prompts.jsonl']}", "rewards={bench_rewards.brevity: 1.0}",
                "prompts_per_step=4", "group_size=4", "max_new_tokens=64", *common]
    return ["preference", f"policy.path={model}", f"data={assets['pairs.jsonl']}", "methods=[dpo]", "batch_size=8",
            "kl_eval=none", "max_length=256", *common]


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    os.chdir(spec["folder"])  # the reward module is found in the current folder
    sys.path.insert(0, spec["folder"])
    from divreg.cli import main

    stamps = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *args: stamps.append(time.perf_counter()))
    before = rss_bytes()
    code = main(spec["argv"])
    if code:
        raise SystemExit(code)
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"seconds_per_step": statistics.median(intervals[1:] if len(intervals) > 1 else intervals),
            "steps": len(stamps), "peak_mb": (peak_rss_bytes() - before) / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker")
    parser.add_argument("--commands", nargs="+", default=["distill-lm", "rl", "preference"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="outputs/benchmarks/engine")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    assets = build_assets(os.path.abspath(args.output))
    rows = []
    for command in args.commands:
        baseline = None
        for variant in args.variants:
            out = os.path.join(assets["folder"], "runs", f"{command}-{variant}")
            argv = command_line(command, assets, out, args.steps) + VARIANTS[variant]
            result = run_worker(__file__, {"argv": argv, "threads": args.threads, "folder": assets["folder"]})
            baseline = baseline or result
            rows.append({"command": command, "variant": variant, **result,
                         "time_vs_fp32": result["seconds_per_step"] / baseline["seconds_per_step"],
                         "memory_vs_fp32": result["peak_mb"] / baseline["peak_mb"]})
            print(json.dumps(rows[-1]), flush=True)
    print("| command | variant | s / step | vs fp32 | peak MB | vs fp32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['command']} | {r['variant']} | {r['seconds_per_step']:.2f} | {r['time_vs_fp32']:.2f}x | "
              f"{r['peak_mb']:.0f} | {r['memory_vs_fp32']:.2f}x |")
    with open(os.path.join(assets["folder"], "engine.json"), "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
