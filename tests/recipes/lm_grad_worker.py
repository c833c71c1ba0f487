"""Run under ``accelerate launch --num_processes 2``: each process takes its half of one global
batch (and its accumulation micro-batches), computes each objective of ``lm_fixtures.MODES``
(JSD; ULD per token and per sequence; GRPO; the preference recipe's loss) normalized by the global counts, and backpropagates
through DDP; rank 0 saves the averaged gradients. Each process also checks that a teacher cache
returns the rows of *its* examples.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 lm_grad_worker.py OUT CACHE_DIR MICRO
"""

import sys

import torch
from accelerate import Accelerator

sys.path.insert(0, __file__.rsplit("/", 3)[0])  # the repository root, for tests.recipes.lm_fixtures

from divreg.data import collate  # noqa: E402
from divreg.targets import TeacherCache  # noqa: E402
from tests.recipes import lm_fixtures as fx  # noqa: E402


def main(out_path: str, cache_dir: str, micro_batches: int) -> None:
    accelerator = Accelerator(cpu=True)
    examples = fx.examples(8)
    local = examples[accelerator.process_index::accelerator.num_processes]
    all_grads = {mode: fx.accumulated_grads(mode, local, micro_batches, accelerator) for mode in fx.MODES}
    all_grads |= {mode: fx.preference_grads(mode, accelerator.process_index, accelerator.num_processes, micro_batches,
                                            accelerator) for mode in fx.PREFERENCE_MODES}
    teacher = fx.model(seed=2).eval()
    cache = TeacherCache(cache_dir)
    batch = collate(local, fx.tokenizer().pad_token_id, length=24)
    ids, logprobs, _ = cache.lookup(batch["example_ids"].tolist(), 23)
    with torch.no_grad():
        live = torch.log_softmax(teacher(batch["input_ids"], batch["attention_mask"])[:, :-1], -1).topk(cache.top_k, -1)
    mask = batch["labels"][:, 1:] != -100
    cache_ok = bool(torch.equal(ids[mask], live.indices[mask])) and bool(
        torch.allclose(logprobs[mask], live.values[mask], atol=1e-6))
    oks = accelerator.gather_for_metrics([cache_ok], use_gather_object=True)
    if accelerator.is_main_process:
        torch.save({"grads": all_grads, "cache_ok": oks,
                    "processes": accelerator.num_processes}, out_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tear the process group down before exit (else gloo may abort at exit)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
