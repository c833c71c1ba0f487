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
default for the job, and where the defaults differ the table says so). One default differs on
every TRL trainer: ``gradient_checkpointing=True`` (TRL's base config), where divreg's default is
off. TRL keeps its default in the DPO, GRPO and off-policy jobs; ``--divreg-extra
gradient_checkpointing=true`` measures divreg the same way (its memory is then comparable).

- ``dpo``: sigmoid DPO, beta 0.1, 8 pairs per step, lengths up to 256 tokens, AdamW lr 1e-6
  constant, no warm-up; ``trl.DPOTrainer`` vs ``divreg preference methods=[dpo]``. TRL's default
  runs the reference model live every step; divreg's default computes the reference's log-probs
  of every pair once before training (``precompute_reference``); TRL's ``precompute_ref_log_probs``
  is measured as well.
- ``grpo``: GRPO with a k3 KL in the loss (beta 0.04), 4 prompts x 4 completions per step, up to 64
  new tokens at temperature 1 (top-k off in both), token-mean loss (TRL's ``dapo``, divreg's
  ``token_mean``), group-scaled advantages, a reward function with TRL's signature (shorter
  completions score higher), AdamW lr 1e-6 constant; ``trl.GRPOTrainer`` vs ``divreg rl``.

- ``opd-rkl`` and ``opd-jsd``: on-policy distillation of a 6M-parameter student (width 256, 4
  layers, the same tokenizer) from the 20M model: 8 prompts per step, the student samples up to 64
  tokens at temperature 1, the loss is the reverse KL (TRL ``beta=1``) or the JSD (TRL ``beta=0.5``,
  divreg ``generalized_jsd`` with ``beta: 0.5``) over the whole vocabulary at the sampled tokens'
  positions, token mean; ``trl.DistillationTrainer`` vs ``divreg distill-lm`` with ``lmbda: 1``.
  TRL's defaults for this trainer are bf16 and gradient checkpointing: both are turned off here
  (divreg runs fp32 without checkpointing unless asked), so the two run the same arithmetic.
- ``kd-fkl``: off-policy distillation, forward KL on the data's completions (prompt: the first 200
  characters of a source file, completion: the next 100): TRL's ``DistillationTrainer`` is
  on-policy only, so TRL's side is ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0, beta=0``
  (its chat-format data through a chat template that only concatenates the messages, so the
  tokens are the same as divreg's prompt + completion).

First losses: DPO's first loss is log 2 in both (the policy is its reference at step 1). The other
first losses are reported, not compared: GRPO and on-policy distillation sample their own
completions (different random streams), and the off-policy job's first batch is a different
sample of the data in each library (each its own shuffle).

Peak memory is the resident set's high-water mark: on this CPU it includes what glibc's allocator
keeps after freeing (run to run it varies by about 10%); the table gives the median of the runs.

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
    job = spec.get("trl_job", spec["job"])
    # the trained model: the student of the distillation jobs, else the model
    model = AutoModelForCausalLM.from_pretrained(spec["student"] if job in DISTILL_METHODS else spec["model"])
    if job.startswith("dpo"):
        from trl import DPOConfig, DPOTrainer

        data = datasets.load_dataset("json", data_files=spec["pairs"], split="train")
        args = _trl_args(DPOConfig, spec, per_device_train_batch_size=8, beta=0.1, loss_type=["sigmoid"],
                         max_length=256, precompute_ref_log_probs=job == "dpo-precomputed")
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[FirstLoss()])
    elif job.startswith("opd"):
        from trl import DistillationConfig, DistillationTrainer

        data = datasets.load_dataset("json", data_files=spec["distill"], split="train").select_columns(["prompt"])
        args = _trl_args(DistillationConfig, spec, per_device_train_batch_size=8, max_completion_length=64,
                         beta=1.0 if job == "opd-rkl" else 0.5, temperature=1.0, top_k=0,
                         gradient_checkpointing=False)
        trainer = DistillationTrainer(model=model, teacher_model=spec["model"], args=args, train_dataset=data,
                                      processing_class=tokenizer, callbacks=[FirstLoss()])
    elif job == "kd-fkl":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        rows = [json.loads(line) for line in open(spec["distill"])]
        data = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                                         {"role": "assistant", "content": r["completion"]}]}
                                           for r in rows])
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the bare concatenation
        args = _trl_args(GKDConfig, spec, per_device_train_batch_size=8, lmbda=0.0, beta=0.0, temperature=1.0,
                         max_length=256)
        teacher = AutoModelForCausalLM.from_pretrained(spec["model"])
        trainer = GKDTrainer(model=model, teacher_model=teacher, args=args, train_dataset=data,
                             processing_class=tokenizer, callbacks=[FirstLoss()])
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


DISTILL_METHODS = {  # divreg's method of each distillation job (one student)
    "opd-rkl": "{name: reverse_kl, divergence: reverse_kl, lmbda: 1.0}",
    "opd-jsd": "{name: jsd, divergence: generalized_jsd, divergence_options: {beta: 0.5}, lmbda: 1.0}",
    "kd-fkl": "{name: forward_kl, divergence: forward_kl}",
}
JOBS = ("dpo", "grpo", *DISTILL_METHODS)


def build_distillation_assets(assets: dict) -> dict:
    """The distillation jobs' student (a smaller Llama with the model's tokenizer, saved beside it)
    and their data (prompt: a source file's first 200 characters; completion: the next 100)."""
    folder = assets["folder"]
    student, data = os.path.join(folder, "student"), os.path.join(folder, "distill.jsonl")
    if not os.path.isfile(os.path.join(student, "model.safetensors")):
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(assets["model"])
        torch.manual_seed(1)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=4, intermediate_size=704,
                                             max_position_embeddings=1024, tie_word_embeddings=True,
                                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
        model.save_pretrained(student)
        tokenizer.save_pretrained(student)
    if not os.path.isfile(data):
        with open(assets["texts.jsonl"]) as source, open(data, "w") as handle:
            for line in source:
                text = json.loads(line)["text"]
                if len(text) >= 300:
                    handle.write(json.dumps({"prompt": text[:200], "completion": text[200:300]}) + "\n")
    return {**assets, "student": student, "distill": data}


def divreg_worker(spec: dict) -> dict:
    os.chdir(spec["folder"])  # the reward module is found in the current folder
    sys.path.insert(0, spec["folder"])
    from divreg.cli import main

    out = os.path.join(spec["out"], "divreg")
    common = [f"steps={spec['steps']}", f"eval_every={spec['steps']}", "checkpoint_every=0", "seeds=[0]",
              f"output_dir={out}", "overwrite=true", "lr=1e-6"]
    if spec["job"] in DISTILL_METHODS:
        argv = ["distill-lm", f"teacher.path={spec['model']}", f"student.path={spec['student']}",
                f"data={spec['distill']}", f"methods=[{DISTILL_METHODS[spec['job']]}]", "batch_size=8", "seq_len=256",
                "max_new_tokens=64", "sampling_temperature=1.0", "temperature=1.0", "kl_eval=false",
                "eval_examples=8", *common]
    elif spec["job"] == "dpo":
        argv = ["preference", f"policy.path={spec['model']}", f"data={spec['pairs']}", "methods=[dpo]", "beta=0.1",
                "batch_size=8", "kl_eval=none", "max_length=256", *common]
    else:
        argv = ["rl", f"policy.path={spec['model']}", f"data={spec['prompts']}", "rewards={bench_rewards.brevity: 1.0}",
                "prompts_per_step=4", "group_size=4", "max_new_tokens=64", "kl_coef=0.04", "kl_estimator=k3",
                "loss_agg=token_mean", "temperature=1.0", *common]
    argv += spec.get("divreg_extra", [])
    losses: list = []
    if spec["job"] in DISTILL_METHODS:  # distill-lm logs evaluations, not steps: the first step's loss from its call
        import divreg.recipes.lm_distillation.trainer as distill_trainer

        backward = distill_trainer.backward_micro_batches

        def recorded(*args, **kwargs):
            totals = backward(*args, **kwargs)
            losses.append(float(totals["loss"]))
            return totals

        distill_trainer.backward_micro_batches = recorded
    stamps = _stamps()
    before = rss_bytes()
    code = main(argv)
    if code:
        raise SystemExit(code)
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    first = next((r["loss"] for r in records if r.get("record") == "step" and "loss" in r),
                 losses[0] if losses else None)
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
    parser.add_argument("--quick", action="store_true", help="6 steps and one run of each side (every job in minutes)")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--repeats", type=int, help="runs of each side, interleaved (default: 1 with --quick, else 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--divreg-extra", nargs="*", default=[],
                        help="extra key=value for divreg's command (e.g. fused=false: the dense path)")
    parser.add_argument("--output", default=os.path.join("outputs", "benchmarks"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from engine import build_assets

    assets = build_distillation_assets(build_assets(os.path.abspath(os.path.join(args.output, "vs_trl")),
                                                    vocab_size=8000))
    steps, repeats = (6, args.repeats or 1) if args.quick else (16, args.repeats or 3)
    rows = []

    def measured(spec: dict) -> dict:
        """Each side ``repeats`` times, interleaved; medians (first losses of the first run)."""
        runs: dict = {"trl": [], "divreg": []}
        for _ in range(repeats):
            for library in runs:
                runs[library].append(run_worker(HERE, {**spec, "library": library}))
        return {library: {"first_loss": results[0]["first_loss"],
                          "seconds_per_step": statistics.median(r["seconds_per_step"] for r in results),
                          "peak_mb": statistics.median(r["peak_mb"] for r in results)}
                for library, results in runs.items()}

    for job in args.jobs:
        spec = {"job": job, **{key: assets[key] for key in ("model", "student", "distill", "folder")},
                "pairs": assets["pairs.jsonl"], "prompts": assets["prompts.jsonl"], "threads": args.threads,
                "steps": steps, "out": os.path.join(assets["folder"], "runs", job), "divreg_extra": args.divreg_extra}
        for name, trl_job in ((job, job), *((("dpo (TRL precompute_ref_log_probs=True)", "dpo-precomputed"),)
                                            if job == "dpo" else ())):
            result = measured({**spec, "job": job, "trl_job": trl_job})
            trl, ours = result["trl"], result["divreg"]
            rows.append({"job": name, "first_loss_trl": trl["first_loss"], "first_loss_divreg": ours["first_loss"],
                         "trl_seconds_per_step": trl["seconds_per_step"],
                         "divreg_seconds_per_step": ours["seconds_per_step"], "trl_peak_mb": trl["peak_mb"],
                         "divreg_peak_mb": ours["peak_mb"], "steps": steps, "repeats": repeats,
                         "divreg_extra": args.divreg_extra})
            print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.output, "vs_trl.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    import transformers
    import trl

    import divreg

    print(f"TRL {trl.__version__}, divreg {divreg.__version__}, transformers {transformers.__version__}, "
          f"torch {__import__('torch').__version__}; {steps} steps, median of {repeats} run(s) each")
    print("| job | first loss TRL / divreg | s / step TRL | divreg | speed-up | peak MB TRL | divreg | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = " / ".join("-" if v is None else f"{v:.4f}" for v in (r["first_loss_trl"], r["first_loss_divreg"]))
        print(f"| {r['job']} | {first} | {r['trl_seconds_per_step']:.2f} | {r['divreg_seconds_per_step']:.2f} | "
              f"{r['trl_seconds_per_step'] / r['divreg_seconds_per_step']:.2f}x | {r['trl_peak_mb']:.0f} | "
              f"{r['divreg_peak_mb']:.0f} | {r['trl_peak_mb'] / r['divreg_peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
