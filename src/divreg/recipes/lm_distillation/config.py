"""Configuration of the language-model distillation recipe.

Methods are data: each entry of ``methods`` is an :class:`LMMethod` mapping (``name``,
``divergence``, ``divergence_options``, ``weight``, ...), or a divergence's short name
(``forward_kl``, ``jsd``, ``kd_reverse_kl``: a student trained with that divergence alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from ...config import require_positive
from ...divergences import check_tail_policy
from ...models import ENSEMBLE_COMBINE, ModelSource, own_tokenizer
from ...targets import VOCAB_POLICIES, gives_hidden_states
from .._blocks import ArithmeticBlock, EngineBlock, GenerationBlock, RunBlock
from .._methods import check_divergence, divergence_name, parse_methods


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, Any]:
    return {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "intermediate_size": intermediate, "max_position_embeddings": 256,
            "tie_word_embeddings": True}


@dataclass
class LMMethod:
    name: str = "forward_kl"  # label in tables, plots and checkpoint names
    divergence: str = "forward_kl"  # any name of divreg.divergences
    divergence_options: dict[str, Any] = field(default_factory=dict)  # e.g. {beta: 0.5} for generalized_jsd
    weight: float = 1.0  # weight of the divergence (0 with ce_weight 1: a student trained on labels only)
    ce_weight: Optional[float] = None  # weight of the CE on the labels; None: the run's ce_weight
    lmbda: float = 0.0  # GKD's lambda: probability per step of training on the student's own generations
    # the teacher's generations from the prompts instead of the dataset's text (sequence-level KD): true (every such
    # step), false, or a probability per step (real plus teacher-generated text, as the infinite-compute paper's student)
    sequence_kd: Any = 0.0
    adaptive_off_policy: bool = False  # DistiLLM's adaptive replay of student generations (replaces lmbda)

    def __post_init__(self):
        where = f"methods.{self.name}"
        self.divergence = divergence_name(self.divergence)
        check_divergence(where, self.divergence, self.divergence_options)
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"{where}.lmbda must be in [0, 1], got {self.lmbda}")
        if isinstance(self.sequence_kd, bool):
            self.sequence_kd = float(self.sequence_kd)
        if not isinstance(self.sequence_kd, (int, float)) or not 0.0 <= self.sequence_kd <= 1.0:
            raise ValueError(f"{where}.sequence_kd must be true, false or a probability in [0, 1], got "
                             f"{self.sequence_kd!r}")
        self.sequence_kd = float(self.sequence_kd)
        if self.weight < 0 or (self.ce_weight is not None and self.ce_weight < 0):
            raise ValueError(f"{where}: weights must be >= 0")

    @property
    def on_generated_text(self) -> bool:
        return self.lmbda > 0 or self.adaptive_off_policy or self.sequence_kd > 0


def _shorthand(name: str) -> dict[str, Any]:
    divergence = divergence_name(name[3:] if name.startswith("kd_") else name)
    options = {"generalized_jsd": {"beta": 0.5}}.get(divergence, {})
    return {"name": name, "divergence": divergence, "divergence_options": options}


def _default_methods() -> list[Any]:
    return [{"name": "ce_only", "weight": 0.0, "ce_weight": 1.0}, "forward_kl", "reverse_kl", "jsd",
            {"name": "on_policy_jsd", "divergence": "generalized_jsd", "divergence_options": {"beta": 0.5},
             "lmbda": 1.0}]


@dataclass
class TeacherSource(ModelSource):
    """distill-lm's teacher: a model (``path`` or ``config``, as any model), or a vLLM server
    (``server``, ``top_k``; :class:`divreg.serving.ServedTeacher`)."""
    # a vLLM server serving the teacher (divreg serve MODEL prints its URL): its top-k log-probs and exact tail
    # mass per position are the target (a sparse signal, as a teacher cache's), on the dataset and on generated text
    server: Optional[str] = None
    top_k: int = 32  # with server: log-probs per position (at most the server's --max-logprobs)
    # an ensemble teacher: the folders (or hub ids) of K trained models that share the run's tokenizer, whose logits
    # are averaged ("Pre-training under infinite compute", 2025); replaces path/config (nothing is trained here)
    members: list[str] = field(default_factory=list)
    combine: str = "logits"  # the ensemble's members: "logits" averaged (the paper) or "probabilities" mixed


@dataclass
class DistillLMConfig(EngineBlock, ArithmeticBlock, RunBlock):
    """The run keys (``seeds``, ``lr``, ``steps``, ...) and the arithmetic task (``digits``, ...,
    for ``data=arithmetic``) come from :mod:`divreg.recipes._blocks`. The teacher and the data
    split are shared by every seed (built under ``data_seed``); each seed trains one student per
    method (its initialization, data order and samples)."""

    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "outputs/distill_lm"  # config, metrics, plots, checkpoints, the teacher
    lr: float = 0.003  # AdamW learning rate of the students
    # AdamW's decoupled weight decay of the students on their matrices (norm gains and biases: none); the
    # infinite-compute paper's regularized recipe uses 0.8-3.2 for its teachers, 0.01-0.1 for distilled students
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = None  # the students' gradients clipped to this global norm (null: never)
    data_seed: int = 0  # the data split (data=arithmetic) and the teacher's initialization and data order
    RENAMED: ClassVar[dict[str, str]] = {
        "seed": "seeds (a list: one student per method and seed) and data_seed (the teacher and the data split)",
        **{f"task_{key}": key for key in ("digits", "operations", "train_size", "test_size")}}

    # "builtin" (Python's pydoc topics), "arithmetic" (the generated task of divreg rl; students are also compared
    # by the exact match of their greedy answers), a .jsonl file, or a datasets folder
    data: str = "builtin"
    held_out: Optional[str] = None  # held-out data for evaluation (same forms); builtin/None: a split of `data`
    # the run's (the students') tokenizer: null = the student's own (student.tokenizer, or the one student.path ships),
    # else the teacher's (teacher.path), else "builtin" (a BPE trained on the training text; arithmetic: one token per
    # character); or a path or hub id
    tokenizer: Optional[str] = None
    vocab_size: int = 1024  # size of the builtin tokenizer
    teacher: TeacherSource = field(default_factory=lambda: TeacherSource(config=_llama(96, 2, 4, 256)))
    teacher_train_steps: int = 400  # a teacher built from a config is first trained with CE for this many steps
    teacher_lr: float = 0.003  # its learning rate
    teacher_weight_decay: float = 0.0  # its AdamW weight decay (as weight_decay)
    # the live teacher's weights during distillation: float32, bfloat16 or float16; null: float32 weights run as the
    # student does (under bf16 autocast with precision=bf16)
    teacher_dtype: Optional[str] = None
    student: ModelSource = field(default_factory=lambda: ModelSource(config=_llama(32, 1, 2, 86)))
    # one student per method: divergence short names or mappings {name, divergence, divergence_options, weight,
    # ce_weight, lmbda, sequence_kd, adaptive_off_policy}
    methods: list[Any] = field(default_factory=_default_methods)
    temperature: float = 1.0  # T of the divergence in the loss (both sides); sampling has its own
    t_squared: bool = True  # scale the divergence by T^2 (no effect at T = 1)
    ce_weight: float = 0.0  # weight of the student's own CE on the labels
    fused: str = "auto"  # "auto" (fused when the vocabulary has >= 4096 entries), "true" or "false"
    vocab_policy: str = "strict"  # "strict" (same tokenizer; padded embeddings sliced) or "uld" (cross-tokenizer)
    # ULD's reduction: "token" (sum over aligned positions / the global batch's answer tokens, like the CE) or
    # "sequence" (the official code: mean over each answer, then over the global batch's sequences)
    uld_reduction: str = "token"
    # a divreg cache-teacher folder: train without the teacher in memory (no teacher is trained here then)
    teacher_cache: Optional[str] = None
    # report the held-out KL to the teacher; with teacher_cache and no teacher.path, the teacher the cache recorded
    # is loaded for it (checked by its weights), and a run whose cache's teacher cannot be loaded is refused
    kl_eval: bool = True
    cache_tail: str = "bucket"  # how a cached top-k signal's tail is used ("bucket" or "renormalize")
    seq_len: int = 64  # tokens per example (builtin data) or maximum length (records)
    prompt_len: int = 16  # prompt tokens of builtin examples (never in the loss)
    max_new_tokens: int = 48  # length of on-policy student generations
    sampling_temperature: float = 1.0  # temperature of on-policy and sequence-level generations (TRL GKD: 0.9)
    top_p: float = 1.0  # nucleus sampling of those generations (1: the full distribution)
    generation: GenerationBlock = field(default_factory=GenerationBlock)  # generation.server: vLLM samples (on-policy)
    batch_size: int = 16  # global batch (examples), split over processes and accumulation
    replay_capacity: int = 64  # DistiLLM replay buffer size (examples)
    replay_init: float = 0.0  # DistiLLM's initial probability of student-generated data (paper: 0.0)
    replay_loss_eps: float = 0.1  # its validation-loss increase that raises the probability by 0.1
    eval_examples: int = 64  # held-out examples per evaluation

    def __post_init__(self):
        super().__post_init__()  # the shared blocks' checks
        if self.tokenizer is None:  # resolved here, so the printed and saved config says which
            self.tokenizer = (own_tokenizer(self.student) or own_tokenizer(self.teacher)
                              or (own_tokenizer(ModelSource(path=self.teacher.members[0])) if self.teacher.members
                                  else None) or "builtin")
        self.methods = parse_methods(self.methods, LMMethod, _shorthand)
        require_positive(self, ("vocab_size", "seq_len", "prompt_len", "max_new_tokens", "batch_size", "temperature",
                                "eval_examples", "replay_capacity", "sampling_temperature", "top_p"))
        if self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.data == "arithmetic" and self.held_out is not None:
            raise ValueError("data=arithmetic has its own held-out problems (test_size); leave held_out unset")
        if self.prompt_len >= self.seq_len:
            raise ValueError(f"prompt_len ({self.prompt_len}) must be < seq_len ({self.seq_len})")
        if self.teacher_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"teacher_dtype must be float32, bfloat16 or float16, got {self.teacher_dtype!r}")
        self.fused = str(self.fused).lower()  # `fused=true` on the command line arrives as a boolean
        gives_hidden_states(self.fused, 0)  # checks the setting
        if self.uld_reduction not in ("sequence", "token"):
            raise ValueError(f"uld_reduction must be 'sequence' or 'token', got {self.uld_reduction!r}")
        if self.vocab_policy not in VOCAB_POLICIES:
            raise ValueError(f"vocab_policy must be one of {VOCAB_POLICIES}, got {self.vocab_policy!r}")
        try:
            check_tail_policy(self.cache_tail)
        except ValueError as error:
            raise ValueError(f"cache_tail: {error}") from None
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if min(self.ce_weight, self.teacher_train_steps, self.checkpoint_every, self.weight_decay,
               self.teacher_weight_decay) < 0:
            raise ValueError("ce_weight, teacher_train_steps, checkpoint_every, weight_decay and teacher_weight_decay "
                             "must be >= 0")
        on_generated_text = any(m.on_generated_text for m in self.methods)
        if self.teacher_cache and on_generated_text:
            raise ValueError("teacher_cache holds the teacher's signal on the dataset only; methods on generated "
                             "text (lmbda > 0, adaptive_off_policy, sequence_kd) need a live teacher")
        if self.teacher.server:
            self._check_served_teacher()
        if self.teacher.members:
            self._check_ensemble_teacher()
        if self.vocab_policy == "uld" and (self.teacher_cache or on_generated_text):
            raise ValueError("vocab_policy=uld works on dataset text with a live teacher (the teacher re-tokenizes "
                             "the text); it supports neither teacher_cache nor on-policy methods")

    def _check_ensemble_teacher(self) -> None:
        """What an ensemble teacher (``teacher.members``) cannot be combined with, each in one line."""
        if self.teacher.path or self.teacher.server:
            raise ValueError("teacher.members is the teacher (an ensemble of those models): leave teacher.path and "
                             "teacher.server unset")
        self.teacher.config = {}  # members replace the model to build and train here: the printed config says so
        if self.teacher.combine not in ENSEMBLE_COMBINE:
            raise ValueError(f"teacher.combine must be one of {list(ENSEMBLE_COMBINE)}, got {self.teacher.combine!r}")
        if self.fused == "true" and not self.teacher_cache:
            raise ValueError("an ensemble teacher has no single hidden state for the fused kernel (its members' logits "
                             "are averaged): set fused=false or auto (auto uses dense logits with an ensemble)")
        if self.vocab_policy == "uld":
            raise ValueError("teacher.members must share the run's tokenizer: vocab_policy=uld is not available "
                             "for an ensemble teacher")

    def _check_served_teacher(self) -> None:
        """What a served teacher cannot do, each in one line."""
        if self.teacher.top_k < 1:
            raise ValueError(f"teacher.top_k must be >= 1, got {self.teacher.top_k}")
        if self.teacher_cache:
            raise ValueError("teacher.server and teacher_cache are two teachers: give one")
        if self.temperature != 1.0:
            raise ValueError(f"teacher.server with temperature={self.temperature}: the server's log-probs are at "
                             "temperature 1 and the tail's mass under another is not recoverable from them; use "
                             "temperature=1 or the teacher in-process (teacher.path)")
        if self.vocab_policy == "uld":
            raise ValueError("vocab_policy=uld re-tokenizes the text for a live teacher; a served teacher is scored on "
                             "the run's tokens: use vocab_policy=strict")
        if any(method.sequence_kd > 0 for method in self.methods):
            raise ValueError("sequence_kd trains on the teacher's own generations, which the served teacher does not "
                             "produce here; drop sequence_kd or use the teacher in-process (teacher.path)")
        if self.kl_eval and self.teacher.path is None:
            raise ValueError("kl_eval reports the KL to the teacher's full distribution, which a server's top-k does "
                             "not give: pass teacher.path=<the folder it serves> as well, or kl_eval=false")
