"""Run under ``accelerate launch --num_processes 2``: each process takes its half of one global
batch (and its accumulation micro-batches), computes the distillation loss normalized by the
global token count, and backpropagates through DDP; rank 0 saves the averaged gradients. Each
process also checks that a teacher cache returns the rows of *its* examples.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 lm_grad_worker.py OUT CACHE_DIR MICRO
"""

import sys

import torch
from accelerate import Accelerator

sys.path.insert(0, __file__.rsplit("/", 3)[0])  # the repository root, for tests.recipes.lm_fixtures

from divreg.data import collate  # noqa: E402
from divreg.losses import LMDistillLoss  # noqa: E402
from divreg.models import next_token_signal  # noqa: E402
from divreg.targets import LiveTeacher, TeacherCache  # noqa: E402
from divreg.training import backward_micro_batches  # noqa: E402
from tests.recipes import lm_fixtures as fx  # noqa: E402


def main(out_path: str, cache_dir: str, micro_batches: int) -> None:
    accelerator = Accelerator(cpu=True)
    examples = fx.examples(8)
    local = examples[accelerator.process_index::accelerator.num_processes]
    student, teacher = fx.model(seed=1), fx.model(seed=2).eval()
    student = accelerator.prepare(student)
    signal = LiveTeacher(teacher)
    loss_fn = LMDistillLoss("generalized_jsd", beta=0.3, temperature=2.0, ce_weight=0.5)
    micro = [collate(local[i::micro_batches], fx.tokenizer().pad_token_id, length=24) for i in range(micro_batches)]

    def micro_loss(model, batch, num_items):  # the recipe's accumulation: global token count, one sync
        out = loss_fn(next_token_signal(model, batch), signal.signal(batch), batch["labels"][:, 1:], num_items)
        return out.loss, {"loss": out.loss}

    backward_micro_batches(accelerator, student, micro, micro_loss)
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
        torch.save({"grads": fx.grads(accelerator.unwrap_model(student)), "cache_ok": oks,
                    "processes": accelerator.num_processes}, out_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tear the process group down before exit (else gloo may abort at exit)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
