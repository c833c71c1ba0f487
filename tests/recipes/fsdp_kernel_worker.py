"""Run under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (2 CPU processes): a
student sharded by FSDP2 computes the fused JSD to a teacher from its hidden states and its output
layer, each process on its half of 8 examples; rank 0 saves what the test checks:

- the all-gathers of one forward + fused loss + backward, with one chunk and with 3-row chunks
  (the output layer is gathered by FSDP once per forward, not once per chunk: the same number);
- that the sharded output layer (after a backward, outside a forward) is refused by the kernel
  and by ``CausalLM.output_weight`` with one line;
- the full gradients (gathered from the shards) and the same gradients of one unsharded process
  on all 8 examples.

    python -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml fsdp_kernel_worker.py OUT
"""

import copy
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/", 3)[0])  # the repository root, for tests.recipes.lm_fixtures

from divreg.data import collate  # noqa: E402
from divreg.fused import fused_linear_divergence  # noqa: E402
from divreg.training import make_accelerator  # noqa: E402
from divreg.training._fsdp import is_fsdp, prepare_sharded  # noqa: E402
from tests.recipes import lm_fixtures as fx  # noqa: E402


def fused_loss(student, teacher, batch, chunk_size, total_tokens):
    """Sum of the per-token JSD over this batch's predicted tokens / ``total_tokens``."""
    hidden = student(batch["input_ids"], batch["attention_mask"], hidden=True)[:, :-1]
    with torch.no_grad():
        target = teacher(batch["input_ids"], batch["attention_mask"], hidden=True)[:, :-1]
    labels = batch["labels"][:, 1:]
    return fused_linear_divergence(hidden, student.output_weight, target, teacher.output_weight, labels=labels,
                                   divergence="generalized_jsd", chunk_size=chunk_size, reduction="sum") / total_tokens


def main(out_path: str) -> None:
    accelerator = make_accelerator(True)
    assert is_fsdp(accelerator), accelerator.distributed_type
    examples = fx.examples(8)
    pad = fx.tokenizer().pad_token_id
    everything = collate(examples, pad, length=24)
    total = int((everything["labels"][:, 1:] != -100).sum())
    teacher = fx.model(seed=2).eval()
    student = fx.model(seed=1, num_hidden_layers=2)

    reference = copy.deepcopy(student)  # one process, all 8 examples
    fused_loss(reference, teacher, everything, None, total).backward()
    expected = fx.grads(reference)

    student, optimizer = prepare_sharded(accelerator, student, torch.optim.SGD(student.parameters(), lr=0.0))
    local = collate(examples[accelerator.process_index::accelerator.num_processes], pad, length=24)
    processes = accelerator.num_processes  # FSDP averages the processes' gradients: each loss counts x processes

    calls = []
    original = dist.all_gather_single  # FSDP2's all-gather of a unit's parameters (torch 2.13)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    gathers = []
    for chunk_size in (None, None, 3):  # the first: FSDP's lazy set-up; then one chunk vs 3-row chunks
        optimizer.zero_grad()
        dist.all_gather_single, calls[:] = counted, []
        try:
            (fused_loss(student, teacher, local, chunk_size, total) * processes).backward()
        finally:
            dist.all_gather_single = original
        gathers.append(len(calls))
    got = {name: param.grad.full_tensor() for name, param in student.named_parameters()}

    refusals = []
    sharded_weight = student.model.get_output_embeddings().weight  # resharded after the backward
    hidden = torch.zeros(3, sharded_weight.shape[1])
    try:
        fused_linear_divergence(hidden, sharded_weight, hidden, teacher.output_weight)
    except ValueError as error:
        refusals.append(str(error))
    try:
        student.output_weight
    except RuntimeError as error:
        refusals.append(str(error))
    if accelerator.is_main_process:
        torch.save({"expected": expected, "got": got, "gathers": gathers, "refusals": refusals,
                    "sharded_type": type(sharded_weight).__name__}, out_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
