"""Config blocks the LM recipes share (TRL's ``BaseConfig`` pattern: a recipe's config declares
only what is specific to it). Each concept has one name, one comment and one check here; a
recipe's dataclass inherits the blocks it uses (its keys stay flat: ``lr=...``, ``digits=...``)
and may only change a default. ``RENAMED`` maps an old key to the message that names its new
one (:func:`divreg.config.load_config` refuses the old key with it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ..config import require_positive
from ..data import ARITHMETIC_OPERATIONS


def _next_check(block, cls) -> None:
    """Run the next block's checks in the MRO (cooperative ``__post_init__``)."""
    following = getattr(super(cls, block), "__post_init__", None)
    if following is not None:
        following()


@dataclass
class RunBlock:
    """The keys of a training run, in every LM recipe."""

    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed (its models, data order, samples)
    output_dir: str = "outputs/run"  # config, metrics, plots, checkpoints
    lr: float = 0.0003  # AdamW learning rate of the main runs
    steps: int = 200  # optimizer steps of each main run
    eval_every: int = 50  # steps between held-out evaluations
    grad_accum: int = 1  # micro-batches per optimizer step and process
    max_grad_norm: Optional[float] = 1.0  # gradients clipped to this global norm before each step (null: never)
    checkpoint_every: int = 50  # steps between checkpoints (0: only at the end)
    resume: bool = False  # continue from the checkpoints in output_dir (refused if the config differs)
    overwrite: bool = False  # replace a previous run in output_dir (without it, a run there is refused)
    cpu: bool = False  # stay on the CPU even with a GPU (always true without CUDA)

    RENAMED: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        require_positive(self, ("lr", "steps", "eval_every", "grad_accum"))
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or null: no clipping), got {self.max_grad_norm}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in self.seeds):
            raise ValueError(f"seeds must be a list of integers, got {self.seeds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        _next_check(self, RunBlock)


PRECISIONS = ("fp32", "bf16")


@dataclass
class LoRABlock:
    """LoRA adapters (peft) on the trained model: only they train."""

    r: int = 16  # the adapters' rank
    alpha: float = 32.0  # their scale is alpha / r
    dropout: float = 0.05  # dropout on the adapters' input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # module names

    def __post_init__(self):
        require_positive(self, ("r", "alpha"))
        if not 0 <= self.dropout < 1 or not self.target_modules:
            raise ValueError(f"lora needs dropout in [0, 1) and at least one target module, got {self.dropout}, "
                             f"{self.target_modules}")


@dataclass
class GenerationBlock:
    """Where the trained model's samples come from (``generation.server``)."""

    # null: transformers' generate inside the trainer; a vLLM server's URL (divreg serve MODEL prints it): every step
    # the trained weights are synced into it (checked on a probe sequence) and it samples, returning its own
    # log-probs of the samples (the sampler/trainer mismatch is logged; sampler_correction corrects for it)
    server: Optional[str] = None
    # the largest |log p_server - log p_trainer| on the probe after a sync; above it the run stops (never drifts)
    sync_tolerance: float = 0.001

    def __post_init__(self):
        if not self.sync_tolerance > 0:
            raise ValueError(f"generation.sync_tolerance must be > 0, got {self.sync_tolerance}")

    def sampler(self, tokenizer, output_dir: str, accelerator):
        """The run's :class:`divreg.serving.ServedSampler` (its server's tokenizer checked now,
        before training), syncing through ``output_dir/sync/process<rank>``; None without a server."""
        if not self.server:
            return None
        import os

        from ..serving import ServedSampler

        return ServedSampler(self.server, tokenizer, os.path.join(output_dir, "sync",
                                                                  f"process{accelerator.process_index}"),
                             tolerance=self.sync_tolerance)


@dataclass
class EngineBlock:
    """How the trained model runs, in every LM recipe: precision and gradient checkpointing."""

    # "fp32", or "bf16": the forward passes of the trained model (and of a frozen reference or teacher, unless set
    # apart) under bf16 autocast, with fp32 master weights and optimizer state; every loss is computed in fp32 (the
    # fused kernels read bf16-computed hidden states and work in fp32)
    precision: str = "fp32"
    # recompute each decoder layer's activations in the backward pass instead of storing them (transformers'
    # gradient checkpointing, non-reentrant): less memory, about one more forward of compute; the same gradients
    gradient_checkpointing: bool = False
    # LoRA adapters on the trained model (e.g. lora={r: 16}); in rl and preference, a reference that is the starting
    # model is then that same model with its adapters disabled: no second copy of the weights. null: full fine-tuning
    lora: Optional[LoRABlock] = None
    # Half Fine-Tuning (HFT, arXiv 2404.18466): freeze a random half of the trained model's decoder-layer parameters
    # (per layer 2 of 4 attention projections, 1-2 of 3 MLP matrices, 1 of 2 norms; embeddings and head trainable),
    # drawn from the run seed: the frozen half keeps the starting weights (less forgetting of what they knew)
    half_fine_tuning: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.half_fine_tuning and self.lora is not None:
            raise ValueError("half_fine_tuning=true and lora both restrict what is trained: choose one (HFT trains "
                             "half of the full model's layers, LoRA trains adapters beside frozen weights)")
        _next_check(self, EngineBlock)


@dataclass
class ArithmeticBlock:
    """The built-in verifiable task (integer arithmetic), in every LM recipe that has it."""

    digits: int = 2  # operands of up to this many digits
    operations: str = "+"  # "+", "*" or "+*" (multiplication: a second operand of 1 digit)
    train_size: int = 3000  # training problems (prompts)
    test_size: int = 200  # held-out problems (exact-match accuracy, greedy decoding)
    data_seed: int = 0  # seeds the data split (the same for every run seed)

    def __post_init__(self):
        require_positive(self, ("digits", "train_size", "test_size"))
        if not self.operations or any(op not in ARITHMETIC_OPERATIONS for op in self.operations):
            raise ValueError(f"operations must be made of {list(ARITHMETIC_OPERATIONS)}, got {self.operations!r}")
        _next_check(self, ArithmeticBlock)


@dataclass
class WarmupBlock:
    """The supervised warm-up (CE on the task's answers) the RL and preference runs start from."""

    # at most this many steps (0: no warm-up, the model as given); null: 3000 on the built-in task (data=builtin), 0 on
    # your own data (your model is trained as given unless you ask for a warm-up)
    warmup_steps: Optional[int] = None
    # stop the warm-up at the first evaluation (every warmup_eval_every steps) whose held-out exact match reaches this,
    # so that every seed starts clearly above 0 and clearly below the ceiling (null: always warmup_steps); it needs
    # answers to match: the built-in task's, or an `answer` column in your data
    warmup_target: Optional[float] = 0.3
    warmup_eval_every: int = 100
    warmup_lr: float = 0.003
    warmup_batch_size: int = 64

    def __post_init__(self):
        require_positive(self, ("warmup_lr", "warmup_batch_size", "warmup_eval_every"))
        if self.warmup_steps is None:  # resolved here, so the printed and saved config says which
            self.warmup_steps = 3000 if getattr(self, "data", "builtin") == "builtin" else 0
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_target is not None and not 0 < self.warmup_target <= 1:
            raise ValueError(f"warmup_target must be in (0, 1] (a test accuracy) or null, got {self.warmup_target}")
        _next_check(self, WarmupBlock)
