"""``divreg cache-teacher``: run a teacher once over a dataset and store its top-k log-probs
and tail mass per position, keyed by example id, so that distillation can run later without
the teacher in memory (``divreg distill-lm teacher_cache=DIR``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from ...config import require_positive
from ...data import collate, examples_fingerprint, load_text_examples
from ...models import (ENSEMBLE_COMBINE, CausalLM, ModelSource, build_causal_lm, load_ensemble, load_tokenizer,
                       model_tokenizer, own_tokenizer, teacher_fingerprint)
from ...targets import TeacherCacheWriter, tokenizer_fingerprint


@dataclass
class TrainedTeacher:
    """A trained teacher by path: the keys of distill-lm's ``teacher`` block that apply to a model
    that is loaded, not built."""

    path: Optional[str] = "outputs/distill_lm/teacher"  # a local folder or hub id of an AutoModelForCausalLM
    # this model's own tokenizer (path or hub id); None: the one its path ships
    tokenizer: Optional[str] = None
    # a vLLM server serving the teacher (divreg serve MODEL prints its URL): its top-k log-probs and exact tail
    # mass are cached instead of an in-process forward (temperature 1 only; path then only names its tokenizer)
    server: Optional[str] = None
    # an ensemble teacher: the folders (or hub ids) of K trained models sharing one tokenizer, logits averaged (as
    # distill-lm's teacher.members); replaces path
    members: list[str] = field(default_factory=list)
    combine: str = "logits"  # the ensemble's members: "logits" averaged (the paper) or "probabilities" mixed

    def source(self) -> ModelSource:
        return ModelSource(path=self.path, tokenizer=self.tokenizer)


@dataclass
class CacheTeacherConfig:
    # the teacher: teacher.path a local folder or hub id (as in distill-lm); the default is the teacher a divreg
    # distill-lm run trained
    teacher: TrainedTeacher = field(default_factory=TrainedTeacher)
    # the tokenizer the students will use: null = the teacher's own (teacher.tokenizer, or the one teacher.path ships)
    tokenizer: Optional[str] = None
    data: str = "builtin"  # "builtin", a .jsonl file or a datasets folder (as in distill-lm)
    held_out: Optional[str] = None  # as in distill-lm: decides which examples are training examples
    seq_len: int = 64  # as in distill-lm
    prompt_len: int = 16  # as in distill-lm
    top_k: int = 32  # log-probs kept per position (plus the tail mass)
    temperature: float = 1.0  # the log-probs are of softmax(logits / temperature)
    batch_size: int = 16  # examples per teacher forward
    output_dir: str = "outputs/teacher_cache"  # the cache folder

    def __post_init__(self):
        require_positive(self, ("seq_len", "prompt_len", "top_k", "temperature", "batch_size"))
        if self.teacher.members:
            if self.teacher.server or self.teacher.path not in (None, TrainedTeacher.path):
                raise ValueError("teacher.members is the teacher (an ensemble of those models): leave teacher.path and "
                                 "teacher.server unset")
            if self.teacher.combine not in ENSEMBLE_COMBINE:
                raise ValueError(f"teacher.combine must be one of {list(ENSEMBLE_COMBINE)}, got "
                                 f"{self.teacher.combine!r}")
            self.teacher.path = None  # the default folder is not a member
            if self.tokenizer is None:
                self.tokenizer = own_tokenizer(ModelSource(path=self.teacher.members[0]))
        if not self.teacher.path and not self.teacher.server and not self.teacher.members:
            raise ValueError("cache-teacher caches a trained teacher: give teacher.path (a local folder or hub id) or "
                             "teacher.server (a vLLM server's URL)")
        if self.teacher.server and self.teacher.path == TrainedTeacher.path and not os.path.isdir(self.teacher.path):
            self.teacher.path = None  # the default folder, absent: the server alone (no path was given)
        if self.teacher.server and self.temperature != 1.0:
            raise ValueError(f"teacher.server with temperature={self.temperature}: a served teacher's log-probs are at "
                             "temperature 1 and the tail's mass under another is not recoverable from them; use "
                             "temperature=1, or the teacher in-process (teacher.path without teacher.server)")
        if self.tokenizer is None and self.teacher.path:  # resolved here, so the printed config says which
            self.tokenizer = own_tokenizer(self.teacher.source())


@torch.no_grad()
def run(config: CacheTeacherConfig) -> str:
    started = time.perf_counter()
    if config.tokenizer is None:
        raise ValueError(f"teacher.members[0] {config.teacher.members[0]!r} ships no tokenizer: give tokenizer= (the "
                         "one the members and the students read)" if config.teacher.members else
                         f"teacher.path {config.teacher.path!r} ships no tokenizer: give tokenizer= (the one the "
                         "students will use)" if config.teacher.path else "teacher.server: give tokenizer= (the one "
                         "the served teacher and the students read; it is checked against the server's)")
    tokenizer = load_tokenizer(config.tokenizer)
    train, _ = load_text_examples(config.data, config.held_out, tokenizer, config.seq_len, config.prompt_len)
    if config.teacher.server:
        return _cache_from_server(config, tokenizer, train, started)
    manifest = {"tokenizer": tokenizer_fingerprint(tokenizer), "examples_sha256": examples_fingerprint(train),
                "data": config.data, "seq_len": config.seq_len,
                "prompt_len": config.prompt_len, "examples": len(train)}
    if config.teacher.members:  # each member's tokenizer is checked against the students' as it loads
        teacher = load_ensemble(config.teacher.members, tokenizer, config.teacher.combine).eval()
        # which teacher wrote it: distill-lm loads the members (checked by their weights) to report the KL
        manifest |= {"teacher_members": [_where(path) for path in config.teacher.members],
                     "teacher_combine": config.teacher.combine}
    else:
        source = config.teacher.source()
        if model_tokenizer(source, tokenizer) is not tokenizer:  # its own tokenizer, another than the students'
            raise ValueError(f"teacher.path {source.path!r} ships its own tokenizer, which differs from tokenizer="
                             f"{config.tokenizer!r}; a cache holds token-level log-probs, so teacher and students must "
                             "share one tokenizer: leave tokenizer unset (the teacher's own)")
        teacher = CausalLM(build_causal_lm(source, tokenizer, 0), len(tokenizer)).eval()
        # which teacher wrote it: distill-lm loads it (by path, checked by its weights) to report the KL
        manifest["teacher"] = _where(source.path)
    if config.top_k > teacher.vocab_size:
        raise ValueError(f"top_k={config.top_k} exceeds the teacher's vocabulary ({teacher.vocab_size})")
    manifest["teacher_sha256"] = teacher_fingerprint(teacher)
    writer = TeacherCacheWriter(config.output_dir, config.top_k, config.temperature, manifest=manifest)
    sample: list[torch.Tensor] = []  # the first positions' full teacher logits, for the truncation report
    for start in tqdm(range(0, len(train), config.batch_size), desc="cache-teacher"):
        examples = train[start:start + config.batch_size]
        batch = collate(examples, tokenizer.pad_token_id)
        logits = teacher(batch["input_ids"], batch["attention_mask"])[:, :-1]  # (B, L-1, V)
        for row, example in enumerate(examples):
            writer.add(example.example_id, logits[row, : len(example.input_ids) - 1])
            if sum(len(s) for s in sample) < TRUNCATION_POSITIONS:
                sample.append(logits[row, : len(example.input_ids) - 1].float() / config.temperature)
    writer.close()
    truncation = _report_truncation(config, torch.cat(sample)[:TRUNCATION_POSITIONS])
    print(f"cached top-{config.top_k} of {len(train)} examples in {config.output_dir} "
          f"({time.perf_counter() - started:.0f} s); {truncation}")
    return config.output_dir


def _where(path: str) -> str:
    """A local folder's absolute path (another run may start elsewhere), else the hub id as given."""
    return os.path.abspath(path) if os.path.isdir(path) else path


TRUNCATION_POSITIONS = 2048  # positions the truncation report of cache-teacher measures


def _report_truncation(config: CacheTeacherConfig, teacher_logits: Optional[torch.Tensor]) -> str:
    """The cache's tail mass (over every cached position: mean, median, 90th percentile, max) and,
    with the teacher's full logits of a sample of positions, the truncation's cost for a student
    at uniform (:func:`divreg.targets.truncation_report`; a trained student's own is measured by
    each evaluation of distill-lm with the teacher present), written to the manifest; returns
    the line to print."""
    import json

    import numpy as np

    from ...targets import TeacherCache, truncation_report

    cache = TeacherCache(config.output_dir)
    mass = np.exp(np.concatenate([np.asarray(tail, dtype=np.float64) for _, _, tail in cache.shards]))
    report = {"tail_mass_mean": float(mass.mean()), "tail_mass_median": float(np.median(mass)),
              "tail_mass_p90": float(np.quantile(mass, 0.9)), "tail_mass_max": float(mass.max())}
    line = f"tail mass off the top-{config.top_k}: mean {report['tail_mass_mean']:.3g}, p90 {report['tail_mass_p90']:.3g}"
    if teacher_logits is not None and config.top_k < teacher_logits.shape[-1]:
        uniform = truncation_report(torch.zeros_like(teacher_logits), teacher_logits, config.top_k)
        report |= {"uniform_student": uniform, "positions": int(teacher_logits.shape[0])}
        line += (f"; for a student at uniform the top-{config.top_k} loss is {uniform['relative_gap']:.2%} below the "
                 f"full one, gradient cosine {uniform['cosine_mean']:.4f}")
    manifest_path = os.path.join(config.output_dir, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    with open(manifest_path, "w") as handle:
        json.dump({**manifest, "truncation": report}, handle, indent=1)
    return line


def _cache_from_server(config: CacheTeacherConfig, tokenizer, train, started: float) -> str:
    """The cache from a served teacher (:class:`divreg.serving.ServedTeacher`): each example's
    top-k and exact tail mass, requested in batches (the server's tokenizer checked first)."""
    from ...serving import ServedTeacher

    teacher = ServedTeacher(config.teacher.server, config.top_k, tokenizer, batch_size=config.batch_size)
    manifest = {"tokenizer": tokenizer_fingerprint(tokenizer), "examples_sha256": examples_fingerprint(train),
                "data": config.data, "seq_len": config.seq_len, "prompt_len": config.prompt_len,
                "examples": len(train), "teacher": config.teacher.path, "teacher_server": config.teacher.server,
                "teacher_served_model": teacher.model}
    writer = TeacherCacheWriter(config.output_dir, config.top_k, 1.0, manifest=manifest)
    step = config.batch_size * teacher.concurrency  # requests in flight together
    for start in tqdm(range(0, len(train), step), desc="cache-teacher (served)"):
        examples = train[start:start + step]
        for example, signal in zip(examples, teacher.score([e.input_ids for e in examples])):
            writer.add_top_k(example.example_id, signal.ids, signal.logprobs, signal.tail_logmass)
    writer.close()
    truncation = _report_truncation(config, None)
    print(f"cached top-{config.top_k} of {len(train)} examples from {config.teacher.server} in {config.output_dir} "
          f"({time.perf_counter() - started:.0f} s); {truncation}")
    return config.output_dir
