"""Configuration of the KL-regularized RL recipe (``divreg rl``): a GRPO-family loss where every
KL design choice is an explicit option (see :class:`divreg.losses.GRPOLoss`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...config import require_positive
from ...data import CURRICULA
from ...losses import GRPOLoss
from ...rl import ADVANTAGE_SCALES, BUILTIN_REWARDS, CTRL_TRANSFORMS
from ...models import ModelSource, own_tokenizer, tiny_llama
from ...targets import gives_hidden_states
from .._blocks import ArithmeticBlock, EngineBlock, GenerationBlock, RunBlock, WarmupBlock



@dataclass
class RLConfig(EngineBlock, WarmupBlock, ArithmeticBlock, RunBlock):
    """The run keys (``seeds``, ``lr``, ``steps``, ...), the built-in task (``digits``, ...) and the
    warm-up (``warmup_*``) come from the shared blocks of :mod:`divreg.recipes._blocks`."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "outputs/rl"
    policy: ModelSource = field(default_factory=lambda: ModelSource(config=tiny_llama()))
    # the run's tokenizer: null = the policy's own (policy.tokenizer, or the one policy.path ships), else "builtin" (one
    # token per character of the built-in task); or a path or hub id
    tokenizer: Optional[str] = None
    # the prompts: "builtin" (the arithmetic task: digits, operations, train_size, test_size, data_seed) or a prompt
    # set, a .jsonl / .jsonl.gz file or a datasets folder with a `prompt` column (a string, or a list of chat
    # messages); its other columns (e.g. `answer`) reach the reward functions by name, as in TRL
    data: str = "builtin"
    held_out: Optional[str] = None  # held-out prompts for evaluation (same forms); null: the first tenth of `data`
    max_prompt_length: int = 512  # a longer prompt in your data is refused (never silently cut)
    # GRPO: each of `steps` steps generates prompts_per_step x group_size completions
    prompts_per_step: int = 16  # global, split over processes
    group_size: int = 8  # completions per prompt (G)
    # which prompts each step draws: "uniform" (every prompt once per epoch, in a seeded order), or by difficulty
    # (Easy2Hard-Bench, arXiv 2409.18433, gives the labels): "easy_to_hard" draws each step's prompts with weights
    # exp(-4 sharpness (rank - progress)^2) over the prompts' difficulty ranks (progress = step / steps), a window
    # that slides from the easiest to the hardest; "hard_to_easy" the reverse. The difficulty: your data's
    # `difficulty_column` (numbers, e.g. an IRT fit of divreg.data.fit_irt), or on the built-in task the operands'
    # number of digits
    curriculum: str = "uniform"
    curriculum_sharpness: float = 4.0
    difficulty_column: str = "difficulty"
    num_iterations: int = 1  # optimizer updates per generated batch (old log-probs used when > 1)
    # completion length limit (EOS ends a completion earlier); null: 6 on the built-in task (at least digits + 2),
    # 256 on your prompts (TRL's default)
    max_new_tokens: Optional[int] = None
    temperature: float = 1.0  # sampling temperature; log-probs are computed at the same temperature (as TRL)
    top_p: float = 1.0  # nucleus sampling (1: the full distribution)
    generation: GenerationBlock = field(default_factory=GenerationBlock)  # generation.server: vLLM samples
    # the sampler/trainer mismatch corrected on the policy-gradient term (needs generation.server): "none", "tis"
    # (min(p_trainer / p_sampler, sampler_cap)) or "mis" (the ratio, 0 outside [sampler_floor, sampler_cap])
    sampler_correction: str = "none"
    sampler_cap: float = 2.0  # C (Yao et al.'s TIS recipe and verl: 2; TRL: 3)
    sampler_floor: Optional[float] = None  # mis only: the lower bound (IcePop: 0.5); null: none
    # reward function: weight. A function is a built-in (exact_match: the completion equals the `answer` column;
    # format: one integer) or a dotted path package.module.function with TRL's signature, f(prompts, completions,
    # **columns) -> list of float or None (None: does not apply), imported from the current folder
    rewards: dict[str, float] = field(default_factory=lambda: {"exact_match": 1.0, "format": 0.1})
    advantage_scale: str = "group"  # "group" (GRPO), "batch" or "none" (Dr. GRPO)
    advantage_eps: float = 0.0001  # added to the std that scales the advantages (TRL's 1e-4; APO's code: 1e-9)
    epsilon_low: float = 0.2  # clip range of the importance ratio, below 1
    epsilon_high: float = 0.2  # above 1 (DAPO's clip-higher: 0.28)
    importance_sampling: str = "token"  # "token" or "sequence" (GSPO)
    # token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm; null: token_mean for a token
    # ratio, seq_mean_token_mean for a sequence ratio (GSPO averages per sequence, and refuses the others)
    loss_agg: Optional[str] = None
    # the KL to the frozen reference (the warm-up model)
    kl_estimator: str = "k3"  # k1, k2, k3, k3_k2grad or exact
    kl_direction: str = "reverse"  # "reverse" KL(pi || ref) or "forward" KL(ref || pi) (exact, or k3's gradient)
    kl_placement: str = "loss"  # "loss" (added per token) or "reward" (k1 per token subtracted from the reward)
    kl_coef: float = 0.04  # beta; with kl_target, the adaptive controller's starting value; 0: no reference at all
    kl_target: Optional[float] = None  # set: Ziegler et al.'s adaptive controller tracks this KL (per token)
    kl_horizon: float = 10000.0  # the controller's horizon (in completions)
    kl_clamp: bool = False  # verl's clamps on the k3 forms (log-ratio +-20, value +-10)
    kl_coef_decay: float = 0.0  # > 0: beta_t = max(kl_coef - kl_coef_decay * t, kl_coef_floor) (KDRL)
    kl_coef_floor: float = 0.0  # the floor of that decay
    # no KL term on correct completions (KDRL's reward-guided masking); their tokens still count in the loss's
    # normalization, so the KL's effective weight falls as more completions are correct
    kl_mask_correct: bool = False
    # the KL's target: null = a frozen copy of the warm-up model; or a model by path / config (KDRL: a larger
    # teacher with the same tokenizer), first trained by the same supervised warm-up for reference_warmup_steps
    reference: Optional[ModelSource] = None
    reference_warmup_steps: int = 0
    # APO (arXiv 2506.21655): DADS weights each completion's KL term, STCR scales long wrong answers' advantages
    dads: bool = False
    dads_scale: float = 2.718281828459045  # s in w = 1 - exp(-s (1 - d)); Euler's number in the official code
    stcr: bool = False
    stcr_base: float = 1.00001  # b in p = 1 - b^-(L - mu+)
    # Lp-Reg (arXiv 2510.03222): low-probability tokens of negative completions pulled toward a min-p proxy
    lp_reg: bool = False
    lp_reg_kappa: float = 0.02  # the proxy's min-p threshold
    lp_reg_rho: float = 0.01  # the lowest-probability fraction of negative-completion tokens considered
    lp_reg_coef: float = 1.0  # beta of the penalty
    # InfAlign's CTRL (arXiv 2412.19792): the reward calibrated against ctrl_samples completions of the reference
    # (the warm-up model) for the same prompt, then transformed: "none" (off), "identity" (the calibrated reward),
    # "best_of_n" (exp(ctrl_t C)) or "worst_of_n" (-exp(-ctrl_t C))
    ctrl: str = "none"
    ctrl_t: float = 1.0
    ctrl_samples: int = 8
    # RAPO (arXiv 2510.03865): the KL in the loss is the forward KL(ref_hat || pi) to the reference reweighted per
    # completion, ref_hat ~ ref^phi per position, phi = the completion's task reward / the sum of the reward weights
    # (the largest reward, as each built-in reward is at most 1), clipped to [0, 1] (the paper's phi was not available
    # to us: this linear map is our documented default). The logged kl_exact / kl_estimate stay the reverse KL to the
    # plain reference (the drift); the loss's KL term is logged as kl_term.
    rapo: bool = False
    entropy_coef: float = 0.0  # an entropy bonus: - entropy_coef * (entropy aggregated like the loss)
    fused: str = "auto"  # per-token log-probs and exact KL through divreg.fused: "auto" (>= 4096 tokens, unless rapo/lp_reg), "true", "false"

    def __post_init__(self):
        super().__post_init__()  # the shared blocks' checks
        if self.tokenizer is None:  # resolved here, so the printed and saved config says which
            self.tokenizer = own_tokenizer(self.policy) or "builtin"
        if self.max_new_tokens is None:  # resolved here, so the printed and saved config says which
            self.max_new_tokens = max(6, self.digits + 2) if self.data == "builtin" else 256
        require_positive(self, ("prompts_per_step", "group_size", "num_iterations", "max_new_tokens", "temperature",
                                "top_p", "kl_horizon", "max_prompt_length", "curriculum_sharpness"))
        if self.curriculum not in CURRICULA:
            raise ValueError(f"curriculum must be one of {list(CURRICULA)}, got {self.curriculum!r}")
        if self.data == "builtin" and self.held_out is not None:
            raise ValueError("held_out names held-out prompts for your own data=; the built-in task holds out its own "
                             "test_size problems")
        self.fused = str(self.fused).lower()  # `fused=true` on the command line arrives as a boolean
        gives_hidden_states(self.fused, 0)  # checks the setting
        self._check_sampling()
        if self.sampler_correction != "none" and not self.generation.server:
            raise ValueError(f"sampler_correction={self.sampler_correction} corrects a sampler other than the trainer: "
                             "set generation.server (a vLLM server) or sampler_correction=none")
        self._check_kl()
        self._check_papers()
        self.loss_agg = self.grpo_loss().loss_agg  # null resolved (the printed config says which); every KL /
        # aggregation option checked now, with GRPOLoss's own messages

    def grpo_loss(self) -> GRPOLoss:
        return GRPOLoss(epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high,
                        importance_sampling=self.importance_sampling, loss_agg=self.loss_agg,
                        max_completion_length=self.max_new_tokens, kl_estimator=self.kl_estimator,
                        kl_direction=self.kl_direction, kl_placement=self.kl_placement, kl_clamp=self.kl_clamp,
                        temperature=self.temperature, sampler_correction=self.sampler_correction,
                        sampler_cap=self.sampler_cap, sampler_floor=self.sampler_floor)

    def _check_sampling(self) -> None:
        """Sampling, rewards and advantages."""
        if not self.advantage_eps > 0:
            raise ValueError(f"advantage_eps must be > 0 (a group whose rewards are all equal has std 0), got "
                             f"{self.advantage_eps}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.advantage_scale not in ADVANTAGE_SCALES:
            raise ValueError(f"advantage_scale must be one of {list(ADVANTAGE_SCALES)}, got {self.advantage_scale!r}")
        if self.group_size < 2 and self.advantage_scale == "group":
            raise ValueError("group_size=1 has no group standard deviation; use group_size >= 2 (GRPO compares the "
                             "completions of one prompt), or advantage_scale=batch or none")
        if not self.rewards:
            raise ValueError("rewards must map at least one reward function (a built-in, "
                             f"{list(BUILTIN_REWARDS)}, or package.module.function) to its weight")
        bad = [name for name in self.rewards if not (name in BUILTIN_REWARDS or "." in name or ":" in name)]
        if bad:
            raise ValueError(f"rewards: {bad} is neither a built-in ({list(BUILTIN_REWARDS)}) nor a dotted path "
                             "package.module.function to your reward function")
        longest = self.digits + 1  # a+b and a*b (b of 1 digit) both have at most digits + 1 characters
        if self.data == "builtin" and self.max_new_tokens < longest + 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} cannot hold the longest answer ({longest} "
                             f"characters) and its EOS; use max_new_tokens >= {longest + 1}")

    def _check_kl(self) -> None:
        """The KL: its coefficient, schedule and target model."""
        if self.kl_target is not None and not self.kl_target > 0:
            raise ValueError(f"kl_target must be > 0 (or null for a fixed kl_coef), got {self.kl_target}")
        if self.kl_target is not None and not self.kl_coef > 0:
            raise ValueError("kl_target needs kl_coef > 0: the adaptive controller multiplies the coefficient, so "
                             "from 0 it would stay 0")
        if self.kl_coef_decay < 0 or self.kl_coef_floor < 0 or self.kl_coef_floor > self.kl_coef:
            raise ValueError(f"kl_coef_decay and kl_coef_floor must be >= 0 with kl_coef_floor <= kl_coef, got "
                             f"{self.kl_coef_decay}, {self.kl_coef_floor} (kl_coef={self.kl_coef})")
        if self.kl_coef_decay and self.kl_target is not None:
            raise ValueError("kl_coef_decay and kl_target both move beta: choose one")
        if self.reference_warmup_steps < 0:
            raise ValueError(f"reference_warmup_steps must be >= 0, got {self.reference_warmup_steps}")
        if self.reference is not None and self.reference.path is None and not self.reference_warmup_steps:
            raise ValueError("a reference built from reference.config is untrained: set reference_warmup_steps > 0 "
                             "(the supervised warm-up trains it first) or give reference.path")
        if self.reference is None and self.reference_warmup_steps:
            raise ValueError("reference_warmup_steps trains a separate reference: give reference.config or "
                             "reference.path (without one, the reference is the warm-up model itself)")

    def _check_papers(self) -> None:
        """The paper options (Lp-Reg, APO, KDRL, CTRL, RAPO) and the entropy bonus."""
        if self.lp_reg:
            if not 0 <= self.lp_reg_kappa <= 1 or not 0 < self.lp_reg_rho <= 1 or self.lp_reg_coef < 0:
                raise ValueError(f"lp_reg needs lp_reg_kappa in [0, 1], lp_reg_rho in (0, 1] and lp_reg_coef >= 0, "
                                 f"got {self.lp_reg_kappa}, {self.lp_reg_rho}, {self.lp_reg_coef}")
            if self.fused == "true":
                raise ValueError("lp_reg needs the sampling policy's full logits for its min-p proxy; use fused=false "
                                 "or auto (dense with lp_reg)")
        if (self.dads or self.kl_mask_correct) and not (self.kl_coef > 0 and self.kl_placement == "loss"):
            raise ValueError("dads and kl_mask_correct weight the KL term of the loss: they need kl_coef > 0 and "
                             "kl_placement=loss")
        if (self.dads or self.stcr or self.kl_mask_correct) and "exact_match" not in self.rewards:
            raise ValueError("dads, stcr and kl_mask_correct read which completions are correct from the exact_match "
                             "reward (the `answer` column): keep it in rewards")
        if self.ctrl not in ("none",) + CTRL_TRANSFORMS:
            raise ValueError(f"ctrl must be 'none' or one of {list(CTRL_TRANSFORMS)}, got {self.ctrl!r}")
        if self.ctrl != "none" and (not self.ctrl_t > 0 or self.ctrl_samples < 1):
            raise ValueError(f"ctrl needs ctrl_t > 0 and ctrl_samples >= 1, got {self.ctrl_t}, {self.ctrl_samples}")
        if self.ctrl != "none" and self.reference is not None:
            raise ValueError("ctrl calibrates against the frozen warm-up model; leave reference unset")
        if self.reference is not None and not (self.kl_coef > 0 or self.kl_target is not None):
            raise ValueError("reference is the KL's target, and kl_coef=0 uses no KL: set kl_coef > 0 or leave reference "
                             "unset")
        if self.rapo:
            if self.kl_target is not None or sum(self.rewards.values()) <= 0:
                raise ValueError("rapo needs a fixed or scheduled kl_coef (the adaptive controller tracks the reverse KL "
                                 "to the plain reference, not RAPO's) and reward weights with a positive sum (phi = "
                                 "reward / the sum of the weights)")
            if not (self.kl_coef > 0 and self.kl_placement == "loss" and self.kl_direction == "forward"
                    and self.kl_estimator in ("exact", "k3")):
                raise ValueError("rapo is a forward KL in the loss to the reweighted reference: set kl_coef > 0, "
                                 "kl_placement=loss, kl_direction=forward and kl_estimator=exact or k3")
            if self.fused == "true" or self.reference is not None or any(w < 0 for w in self.rewards.values()):
                raise ValueError("rapo reweights the warm-up model's full logits by rewards with non-negative weights: "
                                 "use fused=false, no separate reference, and reward weights >= 0")
        if self.entropy_coef < 0:
            raise ValueError(f"entropy_coef must be >= 0 (a bonus), got {self.entropy_coef}")
        if not self.dads_scale > 0 or not self.stcr_base > 1:
            raise ValueError(f"dads_scale must be > 0 and stcr_base > 1, got {self.dads_scale}, {self.stcr_base}")
