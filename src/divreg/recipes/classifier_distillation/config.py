"""Configuration of the classifier-distillation recipe (dataclass defaults; YAML and
``key=value`` overrides are merged onto them by :mod:`divreg.config`).

Methods are data: each entry of ``methods`` is a :class:`ClassifierMethod` mapping, or a short
name (``ce``, ``label_smoothing``, ``sinkd``, ``pskd``, ``two_view``, ``kd_<divergence>``) whose
settings come from the flat defaults below (``kd_temperature``, ``kd_weight``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from ...config import require_positive
from ...divergences import DIVERGENCES
from .._methods import DIVERGENCE_ALIASES, check_divergence, divergence_name, parse_methods

KINDS = ("ce", "label_smoothing", "kd", "sinkd", "pskd", "two_view", "lelp", "hard")
OPTIONS = {"sinkd": ("sinkhorn_weight", "epsilon", "n_iters", "ot_temperature", "scaling"),
           "two_view": ("augment_shift", "augment_noise"),
           "lelp": ("subclasses", "beta", "null_space", "rotate"),
           "hard": ("augmentor", "max_rotation", "max_shift", "max_scale", "teacher_weight", "augmentor_lr",
                    "augmented_weight")}
HARD_DEFAULTS = {"augmentor": "learned", "max_rotation": 0.5, "max_shift": 0.25, "max_scale": 0.2,
                 "teacher_weight": 1.0, "augmentor_lr": 0.001, "augmented_weight": 1.0}
LELP_DEFAULTS = {"subclasses": 10, "beta": 1.0, "null_space": True, "rotate": True}
POSITIVE_OPTIONS = ("epsilon", "n_iters", "ot_temperature", "augmentor_lr")


@dataclass
class ClassifierMethod:
    name: str = "ce"  # label in tables, plots and checkpoint names
    kind: str = "ce"  # ce, label_smoothing, kd (any divergence), sinkd, pskd, two_view or lelp
    divergence: Optional[str] = None  # kd and two_view: a divreg.divergences name
    divergence_options: dict[str, Any] = field(default_factory=dict)  # e.g. {beta: 0.5} for generalized_jsd
    # kd: w of (1 - w) CE + w T^2 D; sinkd: alpha of its KD term; pskd: alpha_T; two_view: the weight of the
    # two-view divergence; label_smoothing: the smoothing; lelp: w of w CE + (1 - w) CE to the subclass target
    weight: float = 0.0
    temperature: float = 1.0  # kd and sinkd: T
    # sinkd: sinkhorn_weight, epsilon, n_iters, ot_temperature, scaling; two_view: augment_shift, augment_noise;
    # lelp: subclasses (S per class, 10), beta (subclass temperature, 1), null_space (true), rotate (true);
    # hard: augmentor (learned | random), max_rotation (radians), max_shift (of the image's half-width), max_scale,
    # teacher_weight (the augmentor's teacher cross-entropy), augmentor_lr, augmented_weight
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        where = f"methods.{self.name}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("kd", "two_view", "hard"):
            if self.divergence is None:
                raise ValueError(f"{where}: kind {self.kind} needs a divergence")
            check_divergence(where, self.divergence, self.divergence_options)
        elif self.divergence is not None:
            raise ValueError(f"{where}: kind {self.kind} takes no divergence, got {self.divergence!r}")
        bounded = self.kind in ("kd", "sinkd", "pskd", "label_smoothing", "lelp", "hard")
        if not (0.0 <= self.weight <= 1.0 if bounded else self.weight >= 0.0):
            raise ValueError(f"{where}.weight must be in {'[0, 1]' if bounded else '[0, inf)'}, got {self.weight}")
        if not self.temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        defaults = {"lelp": LELP_DEFAULTS, "hard": HARD_DEFAULTS}.get(self.kind)
        if defaults is not None:  # resolved here, so the printed and saved config says what runs
            self.options = {**defaults, **self.options}
        unknown = set(self.options) - set(OPTIONS.get(self.kind, ()))
        if unknown:
            raise ValueError(f"{where}.options: kind {self.kind} takes {list(OPTIONS.get(self.kind, ()))}, "
                             f"got unknown {sorted(unknown)}")
        for key, value in self.options.items():
            if key in ("null_space", "rotate"):
                if not isinstance(value, bool):
                    raise ValueError(f"{where}.options.{key} must be true or false, got {value!r}")
            elif key == "subclasses":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{where}.options.subclasses must be a positive integer, got {value!r}")
            elif key == "beta":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{where}.options.beta must be a number > 0, got {value!r}")
            elif key == "augmentor":
                if value not in ("learned", "random"):
                    raise ValueError(f"{where}.options.augmentor must be 'learned' or 'random', got {value!r}")
            elif key == "scaling":
                if value not in ("coupling", "released"):
                    raise ValueError(f"{where}.options.scaling must be 'coupling' or 'released', got {value!r}")
            elif not isinstance(value, (int, float)) or value < 0 or (key in POSITIVE_OPTIONS and value <= 0):
                raise ValueError(f"{where}.options.{key} must be a number {'> 0' if key in POSITIVE_OPTIONS else '>= 0'}"
                                 f", got {value!r}")


@dataclass
class ModelSpec:
    kind: str = "auto"  # "auto" (CNN for images, MLP for features), "mlp", "cnn", or a dotted import path
    widths: list[int] = field(default_factory=lambda: [32, 64])  # hidden widths (MLP) or channels (CNN)


@dataclass
class SinKDSpec:
    temperature: float = 2.0  # T of the KD term (paper GLUE: 2 for SST-2; 3-4 elsewhere)
    kd_weight: float = 0.9  # alpha (paper GLUE: 0.9)
    sinkhorn_weight: float = 0.8  # beta (paper GLUE: 0.8)
    epsilon: float = 0.1  # entropic regularization
    n_iters: int = 20  # Sinkhorn iterations
    ot_temperature: float = 2.0  # T of the distributions compared by OT (fixed at 2 in the released code)
    # "released": the released code's scale, 0.001 x its mass-B plan (= 0.001 B x a mass-1 coupling);
    # "coupling": a mass-1 plan, beta weighs the average transport cost directly (16x more at B = 64)
    scaling: str = "released"


@dataclass
class DistillClassifierConfig:
    RENAMED: ClassVar[dict[str, str]] = {"seed": "data_seed (the data split and the teacher; seeds: the students')"}

    data: str = "digits"  # "digits" (built in), an .npz with x_train/y_train/x_test/y_test, or a datasets folder
    label_column: str = "label"  # label column of a datasets folder
    test_fraction: float = 0.3  # held-out share when the data has no test split
    output_dir: str = "outputs/distill_classifier"  # config, metrics, plots and checkpoints go here
    # students to train: short names (ce, label_smoothing, sinkd, pskd, two_view, lelp, kd_<divergence>) or
    # mappings {name, kind, divergence, divergence_options, weight, temperature, options}
    methods: list[Any] = field(default_factory=lambda: [
        "ce", "kd_forward_kl", "kd_reverse_kl", "kd_jsd", "sinkd", "pskd", "label_smoothing"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one student per method and seed
    data_seed: int = 0  # seed of the data split and of the teacher (shared by every seed's students)
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(widths=[32, 64]))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(widths=[8, 16]))
    teacher_checkpoint: Optional[str] = None  # load the teacher's state dict from here instead of training it
    teacher_epochs: int = 30  # epochs to train the teacher
    epochs: int = 20  # epochs per student
    batch_size: int = 64  # global batch (split across processes; drop_last)
    min_steps: int = 300  # every run takes at least this many optimizer steps: epochs are raised on small data
    lr: float = 0.003  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    kd_temperature: float = 4.0  # T of the kd_* short names
    kd_weight: float = 0.9  # w of the kd_* short names: (1 - w) CE + w T^2 D
    jsd_beta: float = 0.5  # beta of kd_jsd / kd_generalized_jsd
    kd_alpha: float = 0.5  # alpha of kd_alpha (alpha-divergence)
    kd_topk: int = 5  # k of kd_topk (top-k KL with a tail bucket; at most the number of classes)
    sinkd: SinKDSpec = field(default_factory=SinKDSpec)  # settings of the sinkd short name
    pskd_alpha: float = 0.8  # alpha_T of the pskd short name (paper: 0.8)
    label_smoothing: float = 0.1  # smoothing of the label_smoothing short name
    two_view_weight: float = 1.0  # weight of the two-view KL term of the two_view short name
    augment_shift: int = 1  # max pixel shift of the two-view augmentation (images)
    augment_noise: float = 0.1  # std of the Gaussian noise of the two-view augmentation
    ece_bins: int = 10  # bins of the expected calibration error
    checkpoint_every: int = 20  # optimizer steps between checkpoints (also at each epoch end)
    resume: bool = False  # continue from the checkpoints in output_dir (refused if the config differs)
    overwrite: bool = False  # replace a previous run in output_dir (without it, a run there is refused)
    cpu: bool = False  # train on the CPU even when a GPU is available (always true without CUDA)

    def shorthand(self, name: str) -> dict[str, Any]:
        """The method a short name stands for, with its settings from this config."""
        if name == "ce":
            return {"name": name, "kind": "ce"}
        if name == "label_smoothing":
            return {"name": name, "kind": name, "weight": self.label_smoothing}
        if name == "pskd":
            return {"name": name, "kind": name, "weight": self.pskd_alpha}
        if name == "lelp":  # the paper's experiments: no label term, the teacher's class probabilities at T = 1
            return {"name": name, "kind": name, "weight": 0.0, "temperature": 1.0, "options": dict(LELP_DEFAULTS)}
        if name == "two_view":
            return {"name": name, "kind": name, "divergence": "forward_kl", "weight": self.two_view_weight,
                    "options": {"augment_shift": self.augment_shift, "augment_noise": self.augment_noise}}
        if name == "sinkd":
            spec = self.sinkd
            return {"name": name, "kind": name, "weight": spec.kd_weight, "temperature": spec.temperature,
                    "options": {"sinkhorn_weight": spec.sinkhorn_weight, "epsilon": spec.epsilon,
                                "n_iters": spec.n_iters, "ot_temperature": spec.ot_temperature,
                                "scaling": spec.scaling}}
        divergence = divergence_name(name[3:]) if name.startswith("kd_") else None
        if divergence in DIVERGENCES:
            options = {"generalized_jsd": {"beta": self.jsd_beta}, "alpha_divergence": {"alpha": self.kd_alpha},
                       "topk_kl": {"k": self.kd_topk}}.get(divergence, {})
            return {"name": name, "kind": "kd", "divergence": divergence, "divergence_options": options,
                    "weight": self.kd_weight, "temperature": self.kd_temperature}
        raise ValueError(f"methods: unknown method {name!r}; use a mapping {{name, kind, ...}}, one of "
                         f"{list(KINDS[:2]) + list(KINDS[3:])}, or kd_<divergence> with a divergence in "
                         f"{sorted(DIVERGENCES)} or {sorted(DIVERGENCE_ALIASES)}")

    def __post_init__(self):
        require_positive(self, ("teacher_epochs", "epochs", "batch_size", "lr", "kd_temperature", "ece_bins",
                                "sinkd.epsilon", "sinkd.temperature", "sinkd.n_iters", "sinkd.ot_temperature"))
        if self.sinkd.scaling not in ("coupling", "released"):
            raise ValueError(f"sinkd.scaling must be 'coupling' or 'released', got {self.sinkd.scaling!r}")
        for key in ("kd_weight", "jsd_beta", "pskd_alpha", "label_smoothing", "sinkd.kd_weight"):
            value = self.sinkd.kd_weight if key == "sinkd.kd_weight" else getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        for key in ("weight_decay", "two_view_weight", "augment_noise", "augment_shift", "checkpoint_every",
                    "min_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.sinkd.sinkhorn_weight < 0:
            raise ValueError(f"sinkd.sinkhorn_weight must be >= 0, got {self.sinkd.sinkhorn_weight}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in self.seeds):
            raise ValueError(f"seeds must be a list of integers, got {self.seeds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        self.methods = parse_methods(self.methods, ClassifierMethod, self.shorthand)
