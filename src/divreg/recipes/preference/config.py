"""Configuration of the preference-optimization recipe (``divreg preference``): the DPO family
(:class:`divreg.losses.PreferenceLoss`) and HyPO's online KL (:func:`divreg.losses.hypo_kl_surrogate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...config import require_positive
from ...losses import PreferenceLoss
from ...models import ModelSource, own_tokenizer, tiny_llama
from ...targets import gives_hidden_states
from .._blocks import ArithmeticBlock, EngineBlock, GenerationBlock, RunBlock, WarmupBlock


METHODS = ("dpo", "hypo")
KL_EVALUATIONS = ("auto", "exact", "sampled", "none")


@dataclass
class PreferenceConfig(EngineBlock, WarmupBlock, ArithmeticBlock, RunBlock):
    """The run keys, the built-in task and the warm-up come from :mod:`divreg.recipes._blocks`."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "outputs/preference"
    lr: float = 0.00003  # DPO did best at the lowest of 3e-4, 1e-4, 3e-5 here (seed 0), so the default is 3e-5
    steps: int = 300
    eval_every: int = 100
    # "builtin": pairs built from the arithmetic task (chosen = the right answer, rejected = a wrong completion of the
    # warm-up model); else a pairs file (.jsonl) or a datasets folder with prompt/chosen/rejected (strings or chat)
    data: str = "builtin"
    held_out: Optional[str] = None  # held-out pairs for a data file (null: the first tenth of data)
    max_length: int = 64  # prompt + answer + EOS tokens of a data file's pairs (longer answers are truncated)
    train_size: int = 2000  # the built-in task's training prompts (one pair each)
    rejected_samples: int = 8  # completions of the warm-up model per prompt; the first wrong one is the rejected
    policy: ModelSource = field(default_factory=lambda: ModelSource(config=tiny_llama()))
    # the run's tokenizer: null = the policy's own (policy.tokenizer, or the one policy.path ships), else "builtin" (one
    # token per character of the built-in task); or a path or hub id
    tokenizer: Optional[str] = None
    # preference optimization: every method from the same warm-up model, on the same pairs
    methods: list[str] = field(default_factory=lambda: ["dpo", "hypo"])  # "dpo": the losses; "hypo": + the online KL
    losses: dict[str, float] = field(default_factory=lambda: {"sigmoid": 1.0})  # name: weight (MPO-style sums)
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO (sigmoid) / robust DPO (robust)
    divergence: str = "reverse_kl"  # f-DPO: reverse_kl (DPO), forward_kl, js, alpha
    alpha: float = 0.5  # of divergence=alpha (0: reverse KL, 1: forward KL)
    sft_weight: float = 0.0  # + this weight x CE on the chosen answers (token mean over the global batch)
    reference: str = "warmup"  # "warmup": the frozen warm-up model; "none": reference-free losses (no KL at all)
    precompute_reference: bool = True  # the reference's log-probs of every pair computed once, before training
    # HyPO (arXiv 2406.01462): + hypo_coef x KL(pi || ref) estimated on hypo_samples fresh samples per prompt (a
    # leave-one-out score-function surrogate); the paper's lambda and k for this setting were not available to us
    hypo_coef: float = 0.05
    hypo_samples: int = 4
    # completion length limit of samples and greedy evaluation; null: digits + 2 on the built-in task, the longest
    # chosen answer (with its EOS) of your pairs
    max_new_tokens: Optional[int] = None
    generation: GenerationBlock = field(default_factory=GenerationBlock)  # generation.server: HyPO's samples from vLLM
    batch_size: int = 32  # pairs per step (global, split over processes)
    # KL(pi || ref) per held-out prompt (sequence level): "exact" enumerates every completion (small vocabularies and
    # short completions), "sampled" averages the log-ratio of kl_samples samples, "auto" is exact when it fits
    kl_eval: str = "auto"
    kl_prompts: int = 20  # held-out prompts the KL is measured on
    kl_samples: int = 16
    fused: str = "auto"  # per-token log-probs through divreg.fused: "auto" (>= 4096 tokens), "true", "false"

    def __post_init__(self):
        super().__post_init__()  # the shared blocks' checks
        if self.tokenizer is None:  # resolved here, so the printed and saved config says which
            self.tokenizer = own_tokenizer(self.policy) or "builtin"
        if self.max_new_tokens is None and self.data == "builtin":
            self.max_new_tokens = self.digits + 2  # your pairs' longest chosen answer is known once they are read
        require_positive(self, ("max_length", "rejected_samples", "batch_size", "kl_prompts", "kl_samples"))
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or null), got {self.max_new_tokens}")
        self.fused = str(self.fused).lower()
        gives_hidden_states(self.fused, 0)  # checks the setting
        if self.data == "builtin" and self.max_new_tokens < self.digits + 2:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} cannot hold the longest answer ({self.digits + 1} "
                             f"characters) and its EOS; use max_new_tokens >= {self.digits + 2}")
        if self.warmup_steps and self.warmup_target is not None and self.data != "builtin":
            raise ValueError("warmup_target stops the warm-up at a test accuracy, which only the built-in task has: "
                             "set warmup_target=null (the warm-up on your pairs' chosen answers then runs warmup_steps)")
        if not self.methods or len(set(self.methods)) != len(self.methods) or any(m not in METHODS for m in self.methods):
            raise ValueError(f"methods must be a non-empty list of {list(METHODS)} without repeats, got {self.methods}")
        if self.reference not in ("warmup", "none"):
            raise ValueError(f"reference must be 'warmup' or 'none', got {self.reference!r}")
        if "hypo" in self.methods:
            if self.reference == "none":
                raise ValueError("hypo regularizes KL(pi || ref): it needs reference=warmup")
            if not self.hypo_coef > 0 or self.hypo_samples < 2:
                raise ValueError(f"hypo needs hypo_coef > 0 and hypo_samples >= 2 (its leave-one-out baseline needs "
                                 f"another sample of the prompt), got {self.hypo_coef}, {self.hypo_samples}")
        if self.kl_eval not in KL_EVALUATIONS:
            raise ValueError(f"kl_eval must be one of {list(KL_EVALUATIONS)}, got {self.kl_eval!r}")
        if self.reference == "none" and self.kl_eval != "none":
            raise ValueError("reference=none loads no reference, so no KL to it can be measured: set kl_eval=none")
        if self.data == "builtin" and self.held_out is not None:
            raise ValueError("held_out is for a data file; the built-in task holds out test_size problems")
        if self.generation.server and "hypo" not in self.methods:
            raise ValueError("generation.server samples HyPO's completions during training, and no method here samples "
                             "(add hypo to methods, or set generation.server=null)")
        self.preference_loss()  # every loss option checked now, with PreferenceLoss's own messages

    def preference_loss(self) -> PreferenceLoss:
        return PreferenceLoss(dict(self.losses), beta=self.beta, label_smoothing=self.label_smoothing,
                              divergence=self.divergence, alpha=self.alpha, sft_weight=self.sft_weight)
