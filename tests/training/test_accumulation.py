"""Micro-batch backward with global counts: the gradient does not depend on the split (the
2-process case and the ULD objectives are in tests/recipes/test_lm_losses.py)."""

import torch
from accelerate import Accelerator

from divreg.data import collate
from divreg.losses import LMDistillLoss
from divreg.models import next_token_signal
from divreg.targets import LiveTeacher
from divreg.training import backward_micro_batches, global_item_counts

from ..recipes import lm_fixtures as fx


def _grads(micro_batches):
    student, teacher = fx.model(seed=1), fx.model(seed=2).eval()
    loss_fn = LMDistillLoss("reverse_kl", ce_weight=0.3)
    examples = fx.examples(8)
    micro = [collate(examples[i::micro_batches], fx.tokenizer().pad_token_id) for i in range(micro_batches)]

    def micro_loss(model, batch, counts):
        out = loss_fn(next_token_signal(model, batch), LiveTeacher(teacher).signal(batch), batch["labels"][:, 1:],
                      counts.tokens)
        return out.loss, {"loss": out.loss, "divergence": out.divergence}

    accelerator = Accelerator(cpu=True)
    totals = backward_micro_batches(accelerator, student, micro, micro_loss)
    counts = global_item_counts(micro, accelerator)
    valid = [b["labels"][:, 1:] != -100 for b in micro]
    assert float(counts.tokens) == sum(int(v.sum()) for v in valid)
    assert float(counts.sequences) == sum(int(v.any(1).sum()) for v in valid) == 8
    return fx.grads(student), totals


def test_one_batch_equals_four_micro_batches():
    (one, one_totals), (four, four_totals) = _grads(1), _grads(4)
    for name in one:
        torch.testing.assert_close(four[name], one[name], rtol=1e-5, atol=1e-8)
    for key in one_totals:  # the parts are global values too
        assert abs(four_totals[key] - one_totals[key]) <= 1e-6 * abs(one_totals[key])
