"""Configuration of the classifier-distillation recipe (dataclass defaults; YAML and
``key=value`` overrides are merged onto them by :mod:`divreg.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config import require_positive
from ..divergences._registry import DIVERGENCES

# Short names accepted after "kd_" besides the registered divergence names.
KD_ALIASES = {"jsd": "generalized_jsd", "tv": "total_variation", "alpha": "alpha_divergence", "topk": "topk_kl"}
BASE_METHODS = ("ce", "label_smoothing", "sinkd", "pskd", "two_view")


def kd_divergence(method: str) -> Optional[str]:
    """The divergence a ``kd_<name>`` method uses, or None if ``method`` is not a KD method."""
    if not method.startswith("kd_"):
        return None
    name = method[3:]
    return KD_ALIASES.get(name, name)


@dataclass
class ModelSpec:
    kind: str = "auto"  # "auto" (CNN for images, MLP for features), "mlp", "cnn", or a dotted import path
    widths: list[int] = field(default_factory=lambda: [32, 64])  # hidden widths (MLP) or channels (CNN)


@dataclass
class SinKDSpec:
    temperature: float = 2.0  # T of the KD term and of the distributions compared by OT (paper GLUE: 2)
    kd_weight: float = 0.9  # alpha (paper GLUE: 0.9)
    sinkhorn_weight: float = 0.8  # beta (paper GLUE: 0.8)
    epsilon: float = 0.1  # entropic regularization
    n_iters: int = 20  # Sinkhorn iterations


@dataclass
class DistillClassifierConfig:
    data: str = "digits"  # "digits" (built in), an .npz with x_train/y_train/x_test/y_test, or a datasets folder
    label_column: str = "label"  # label column of a datasets folder
    test_fraction: float = 0.3  # held-out share when the data has no test split
    output_dir: str = "outputs/distill_classifier"  # config, metrics, plots and checkpoints go here
    methods: list[str] = field(default_factory=lambda: [
        "ce", "kd_forward_kl", "kd_reverse_kl", "kd_jsd", "sinkd", "pskd", "label_smoothing"])  # students to train
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one student per method and seed
    seed: int = 0  # seed of the data split and of the teacher
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(widths=[32, 64]))
    student: ModelSpec = field(default_factory=lambda: ModelSpec(widths=[8, 16]))
    teacher_checkpoint: Optional[str] = None  # load the teacher's state dict from here instead of training it
    teacher_epochs: int = 30  # epochs to train the teacher
    epochs: int = 30  # epochs per student
    batch_size: int = 64  # global batch (split across processes; drop_last)
    lr: float = 0.003  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay
    kd_temperature: float = 4.0  # T of the kd_* methods
    kd_weight: float = 0.9  # w of the kd_* methods: (1 - w) CE + w T^2 D
    jsd_beta: float = 0.5  # beta of kd_jsd
    kd_alpha: float = 0.5  # alpha of kd_alpha (alpha-divergence)
    kd_topk: int = 5  # k of kd_topk (top-k KL with a tail bucket)
    sinkd: SinKDSpec = field(default_factory=SinKDSpec)
    pskd_alpha: float = 0.8  # alpha_T of PS-KD (paper: 0.8)
    label_smoothing: float = 0.1  # smoothing of the label_smoothing baseline
    two_view_weight: float = 1.0  # weight of the two-view KL term
    augment_shift: int = 1  # max pixel shift of the two-view augmentation (images)
    augment_noise: float = 0.1  # std of the Gaussian noise of the two-view augmentation
    ece_bins: int = 10  # bins of the expected calibration error
    checkpoint_every: int = 20  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)
    resume: bool = False  # continue from the checkpoints in output_dir
    cpu: bool = False  # train on the CPU even when a GPU is available (always true without CUDA)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("methods must list at least one method")
        for method in self.methods:
            divergence = kd_divergence(method)
            if method not in BASE_METHODS and divergence not in DIVERGENCES:
                raise ValueError(
                    f"methods: unknown method {method!r}; use {list(BASE_METHODS)} or kd_<divergence> with a divergence "
                    f"in {sorted(DIVERGENCES)} or {sorted(KD_ALIASES)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a method twice: {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        require_positive(self, ("teacher_epochs", "epochs", "batch_size", "lr", "kd_temperature", "ece_bins",
                                "sinkd.epsilon", "sinkd.temperature", "sinkd.n_iters"))
        for key in ("kd_weight", "jsd_beta", "pskd_alpha", "label_smoothing", "sinkd.kd_weight"):
            value = self.sinkd.kd_weight if key == "sinkd.kd_weight" else getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        for key in ("weight_decay", "two_view_weight", "augment_noise", "augment_shift", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.sinkd.sinkhorn_weight < 0:
            raise ValueError(f"sinkd.sinkhorn_weight must be >= 0, got {self.sinkd.sinkhorn_weight}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
