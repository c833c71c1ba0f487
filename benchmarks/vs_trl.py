"""The same job in TRL's trainer and in divreg's command: seconds per optimizer step and peak
memory, on the same model, data, batch and lengths, with the same optimizer.

The model: a Llama-architecture causal LM (width 512, 6 layers, 8 heads, tied embeddings; about 20M
parameters with its 8,000-token byte-level BPE, trained on Python's standard-library sources),
saved to a folder both libraries load by path (``benchmarks/engine.py``'s ``build_assets``, nothing
downloaded). Each (job, library) runs in its own worker process with the thread count set.
Seconds per step is the median interval between consecutive optimizer steps after the first
(a global optimizer-step hook sees both libraries' AdamW); peak memory is the worker's peak
resident set minus its resident set before the job (torch, transformers, datasets and accelerate
imported by then in both: each side's peak counts its own imports and its job).

Jobs (TRL 1.16 against divreg; the settings both are given; everything else each library's
default for the job, and where the defaults differ the table says so):

- ``dpo``: sigmoid DPO, beta 0.1, 8 pairs per step, lengths up to 256 tokens, AdamW lr 1e-6
  constant, no warm-up; ``trl.DPOTrainer`` vs ``divreg preference methods=[dpo]``. TRL's default
  runs the reference model live every step; divreg's default computes the reference's log-probs
  of every pair once before training (``precompute_reference``); TRL's ``precompute_ref_log_probs``
  is measured as well.
- ``grpo``: GRPO with a k3 KL in the loss (beta 0.04), 4 prompts x 4 completions per step, up to 64
  new tokens at temperature 1 (top-k off in both), token-mean loss (TRL's ``dapo``, divreg's
  ``token_mean``), group-scaled advantages, a reward function with TRL's signature (shorter
  completions score higher), AdamW lr 1e-6 constant; ``trl.GRPOTrainer`` vs ``divreg rl``.

First losses: DPO's first loss is log 2 in both (the policy is its reference at step 1). GRPO's
first losses are not comparable: each library samples its own completions (different random
streams), so they are reported, not compared.

Not measured here yet: on-policy and off-policy distillation against ``trl.DistillationTrainer``,
and the vLLM engine in both (see the docs' benchmark page).

    .venv/bin/python benchmarks/vs_trl.py --quick     # writes outputs/benchmarks/vs_trl.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import peak_rss_bytes, rss_bytes, run_worker  # noqa: E402

HERE = os.path.abspath(__file__)


def _stamps() -> list:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list = []
    register_optimizer_step_post_hook(lambda *args: stamps.append(time.perf_counter()))
    return stamps


def _seconds_per_step(stamps: list) -> float:
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(intervals[1:] if len(intervals) > 1 else intervals)


def _trl_args(config_type, spec: dict, **job):
    return config_type(output_dir=os.path.join(spec["out"], "trl"), use_cpu=True, bf16=False, report_to="none",
                       save_strategy="no", logging_steps=1, max_steps=spec["steps"], learning_rate=1e-6,
                       lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
                       seed=0, dataloader_num_workers=0, **job)


def trl_worker(spec: dict) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    losses: list = []

    class FirstLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    stamps = _stamps()
    before = rss_bytes()
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    if spec["job"].startswith("dpo"):
        from trl import DPOConfig, DPOTrainer

        data = datasets.load_dataset("json", data_files=spec["pairs"], split="train")
        args = _trl_args(DPOConfig, spec, per_device_train_batch_size=8, beta=0.1, loss_type=["sigmoid"],
                         max_length=256, precompute_ref_log_probs=spec["job"] == "dpo-precomputed")
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[FirstLoss()])
    else:
        from trl import GRPOConfig, GRPOTrainer

        sys.path.insert(0, spec["folder"])
        from bench_rewards import brevity

        data = datasets.load_dataset("json", data_files=spec["prompts"], split="train")
        args = _trl_args(GRPOConfig, spec, per_device_train_batch_size=16, num_generations=4,
                         max_completion_length=64, beta=0.04, loss_type="dapo", temperature=1.0, top_k=0,
                         scale_rewards="group")
        trainer = GRPOTrainer(model=model, reward_funcs=brevity, args=args, train_dataset=data,
                              processing_class=tokenizer, callbacks=[FirstLoss()])
    trainer.train()
    return {"seconds_per_step": _seconds_per_step(stamps), "steps": len(stamps),
            "peak_mb": (peak_rss_bytes() - before) / 2 ** 20, "first_loss": losses[0] if losses else None}


def divreg_worker(spec: dict) -> dict:
    os.chdir(spec["folder"])  # the reward module is found in the current folder
    sys.path.insert(0, spec["folder"])
    from divreg.cli import main

    out = os.path.join(spec["out"], "divreg")
    common = [f"steps={spec['steps']}", f"eval_every={spec['steps']}", "checkpoint_every=0", "seeds=[0]",
              f"output_dir={out}", "overwrite=true", "lr=1e-6"]
    if spec["job"] == "dpo":
        argv = ["preference", f"policy.path={spec['model']}", f"data={spec['pairs']}", "methods=[dpo]", "beta=0.1",
                "batch_size=8", "kl_eval=none", "max_length=256", *common]
    else:
        argv = ["rl", f"policy.path={spec['model']}", f"data={spec['prompts']}", "rewards={bench_rewards.brevity: 1.0}",
                "prompts_per_step=4", "group_size=4", "max_new_tokens=64", "kl_coef=0.04", "kl_estimator=k3",
                "loss_agg=token_mean", "temperature=1.0", *common]
    stamps = _stamps()
    before = rss_bytes()
    code = main(argv)
    if code:
        raise SystemExit(code)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    first = next((r["loss"] for r in records if r.get("record") == "step" and "loss" in r), None)
    return {"seconds_per_step": _seconds_per_step(stamps), "steps": len(stamps),
            "peak_mb": (peak_rss_bytes() - before) / 2 ** 20, "first_loss": first}


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    # what both libraries are built on, imported before the baseline: each side's peak counts its own imports
    # (trl; divreg's omegaconf and matplotlib) and its job, not transformers' or datasets'
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    return trl_worker(spec) if spec["library"] == "trl" else divreg_worker(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker")
    parser.add_argument("--quick", action="store_true", help="fewer steps (every job in a few minutes)")
    parser.add_argument("--jobs", nargs="+", default=["dpo", "grpo"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=os.path.join("outputs", "benchmarks"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from engine import build_assets

    assets = build_assets(os.path.abspath(os.path.join(args.output, "vs_trl")), vocab_size=8000)
    steps = 6 if args.quick else 16
    rows = []
    for job in args.jobs:
        base = {"job": job, "model": assets["model"], "pairs": assets["pairs.jsonl"], "prompts": assets["prompts.jsonl"],
                "folder": assets["folder"], "threads": args.threads, "steps": steps,
                "out": os.path.join(assets["folder"], "runs", job)}
        trl = run_worker(HERE, {**base, "library": "trl"})
        ours = run_worker(HERE, {**base, "library": "divreg"})
        rows.append({"job": job, "first_loss_trl": trl["first_loss"], "first_loss_divreg": ours["first_loss"],
                     "trl_seconds_per_step": trl["seconds_per_step"], "divreg_seconds_per_step": ours["seconds_per_step"],
                     "trl_peak_mb": trl["peak_mb"], "divreg_peak_mb": ours["peak_mb"], "steps": steps})
        print(json.dumps(rows[-1]), flush=True)
        if job == "dpo":  # TRL with its reference log-probs precomputed too (not its default)
            extra = run_worker(HERE, {**base, "job": "dpo-precomputed", "library": "trl"})
            rows.append({**rows[-1], "job": "dpo (TRL precompute_ref_log_probs=True)",
                         "first_loss_trl": extra["first_loss"], "trl_seconds_per_step": extra["seconds_per_step"],
                         "trl_peak_mb": extra["peak_mb"]})
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.output, "vs_trl.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    print("| job | first loss TRL / divreg | s / step TRL | divreg | TRL / divreg | peak MB TRL | divreg |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        first = " / ".join("-" if v is None else f"{v:.4f}" for v in (r["first_loss_trl"], r["first_loss_divreg"]))
        print(f"| {r['job']} | {first} | {r['trl_seconds_per_step']:.3f} | {r['divreg_seconds_per_step']:.3f} | "
              f"{r['trl_seconds_per_step'] / r['divreg_seconds_per_step']:.2f}x | {r['trl_peak_mb']:.0f} | "
              f"{r['divreg_peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
