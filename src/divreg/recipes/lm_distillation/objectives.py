"""The objective of each run of the LM recipe, as ``loss_fn(model, micro_batch, counts)`` for
:func:`divreg.training.backward_micro_batches` (``counts``: the global batch's
:class:`divreg.training.ItemCounts`): the teacher's CE pre-training, token-level distillation
to a live or cached teacher, and ULD to a teacher with another tokenizer. The math lives in
:mod:`divreg.losses`; this module only wires signals and counts to it."""

from __future__ import annotations

import torch.nn.functional as F

from ...data import IGNORE_INDEX, examples_fingerprint
from ...losses import LMDistillLoss
from ...models import next_token_signal
from ...targets import LiveTeacher, TeacherCache, gives_hidden_states, shared_vocab_size, tokenizer_fingerprint
from .config import DistillLMConfig, LMMethod
from .teachers import CrossTokenizerTeacher



def next_token_ce(logits, batch, num_items):
    """Next-token CE on the batch's labels, summed and divided by the global token count."""
    return F.cross_entropy(logits.float().transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="sum") / num_items


def ce_loss(model, batch, counts):
    """The teacher's pre-training loss."""
    loss = next_token_ce(model(batch["input_ids"], batch["attention_mask"])[:, :-1], batch, counts.tokens)
    return loss, {"loss": loss, "ce": loss}


def uld_loss_fn(cross: CrossTokenizerTeacher, weight: float, ce_weight: float):
    """ULD's objective: ``ce_weight * CE + weight * ULD``, the CE over the global batch's label
    tokens, the ULD term by its reduction's global count (sequences or tokens), so neither
    depends on accumulation or processes."""
    def loss_fn(model, batch, counts):
        logits = next_token_signal(model, batch).logits  # (B, T-1, V)
        ce = next_token_ce(logits, batch, counts.tokens)
        distance = cross.loss(logits, batch, counts.sequences if cross.per_sequence else counts.tokens)
        loss = ce_weight * ce + weight * distance
        return loss, {"loss": loss.detach(), "divergence": distance.detach(), "ce": ce.detach()}

    return loss_fn


def make_student_loss(config: DistillLMConfig, method: LMMethod, teacher, teacher_tokenizer, tokenizer):
    """``loss_fn(model, batch, counts)`` of one method, after the vocabulary policy. Each
    CausalLM already keeps only its tokenizer's rows, so the policy compares the tokenizers."""
    shared = shared_vocab_size(tokenizer, teacher_tokenizer, len(tokenizer), len(teacher_tokenizer),
                               config.vocab_policy)
    if shared is None:  # cross-tokenizer: CE on the student's labels + ULD to the teacher
        cross = CrossTokenizerTeacher(teacher, tokenizer, teacher_tokenizer, config.temperature,
                                      per_sequence=config.uld_reduction == "sequence")
        return uld_loss_fn(cross, method.weight, 1.0 if method.ce_weight is None else method.ce_weight), None
    # the one fused rule: hidden states from 4096 entries on (a live ensemble teacher has none: dense logits)
    live_ensemble = bool(config.teacher.members) and not config.teacher_cache
    hidden = gives_hidden_states(config.fused, shared) and not live_ensemble
    if config.teacher_cache:
        target = TeacherCache(config.teacher_cache)  # checked against the run's examples at setup
    elif config.teacher.server:  # the server's tokenizer is checked against the run's here, before training
        from ...serving import ServedTeacher

        target = ServedTeacher(config.teacher.server, config.teacher.top_k, tokenizer)
    else:
        target = LiveTeacher(teacher, hidden=hidden)
    ce_weight = config.ce_weight if method.ce_weight is None else method.ce_weight
    loss_module = LMDistillLoss(method.divergence, temperature=config.temperature, t_squared=config.t_squared,
                                divergence_weight=method.weight, ce_weight=ce_weight, tail=config.cache_tail,
                                **method.divergence_options)

    def distill_loss(model, batch, counts):
        out = loss_module(next_token_signal(model, batch, hidden=hidden), target.signal(batch), batch["labels"][:, 1:],
                          counts.tokens)
        return out.loss, {"loss": out.loss, "divergence": out.divergence, "ce": out.cross_entropy}

    return distill_loss, shared


def check_cache(cache: TeacherCache, config: DistillLMConfig, tokenizer, train) -> None:
    """The cache must hold this run's training examples (compared by content: tokens, labels and
    ids, so the same file by another path is fine and a changed file or another held-out split is
    not), for this tokenizer, at this temperature."""
    if "examples_sha256" not in cache.manifest:
        raise ValueError(f"teacher_cache {config.teacher_cache!r} was written by an older divreg without a fingerprint "
                         "of its examples; write it again with divreg cache-teacher")
    if cache.manifest.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise ValueError("teacher_cache was written for another tokenizer than this run's; write a cache with it")
    if cache.manifest["examples_sha256"] != examples_fingerprint(train):
        raise ValueError(f"teacher_cache holds the teacher's signal on other training examples than this run's (written "
                         f"from data={cache.manifest.get('data')!r}, seq_len={cache.manifest.get('seq_len')}, "
                         f"prompt_len={cache.manifest.get('prompt_len')}); the data file, its held-out split or the "
                         "layout changed: write the cache again for this data")
    if abs(cache.temperature - config.temperature) > 1e-12:
        raise ValueError(f"teacher_cache holds log-probs at temperature {cache.temperature}, this run uses "
                         f"temperature={config.temperature}; write a cache at this temperature")
