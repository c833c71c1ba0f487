"""The training objectives the classifier recipe compares, each a small object that turns a
batch into a loss using the losses of :mod:`divreg.losses` (no divergence math here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import ClassificationData, augment
from ...divergences import cross_entropy, forward_kl
from ...losses import KDLoss, PSKDLoss, SinKDLoss, TwoViewKL
from ...schedules import LinearRamp
from ...targets import DenseLogits, PastPredictions, class_log_probs, fit_subclass_projection
from .config import ClassifierMethod


@dataclass
class Batch:
    x: Tensor  # (B, ...) this process's inputs
    labels: Tensor  # (B,)
    indices: Tensor  # (B,) dataset indices
    epoch: int
    seeds: list[int]  # one per example: the seed of its augmentations at this step (derive_seed(seed, step, index))


class Method:
    """Cross-entropy; subclasses override :meth:`loss`. ``needs_teacher`` asks the loop for the
    teacher's signal; the state (``state_dict``) is saved in checkpoints; :meth:`student` shapes
    the student's network (LELP's has S outputs per class)."""

    needs_teacher = False

    def outputs(self, num_classes: int) -> int:
        """How many outputs the student's network needs."""
        return num_classes

    def student(self, network: nn.Module, num_classes: int) -> nn.Module:
        """The student to train and evaluate around ``network``: its forward gives class logits."""
        return network

    def loss(self, model: nn.Module, batch: Batch, target: Optional[DenseLogits]) -> tuple[Tensor, Tensor]:
        """(loss, the model's logits on the clean inputs)."""
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.labels), logits

    def after_step(self, indices: Tensor, logits: Tensor) -> None:
        """Called with the *global* batch's indices and logits after each optimizer step."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LabelSmoothing(Method):
    def __init__(self, smoothing: float):
        self.smoothing = smoothing

    def loss(self, model, batch, target):
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.labels, label_smoothing=self.smoothing), logits


class Distillation(Method):
    """Any loss of the form ``loss_fn(logits, target, labels)`` (KD, SinKD)."""

    needs_teacher = True

    def __init__(self, loss_fn: nn.Module):
        self.loss_fn = loss_fn

    def loss(self, model, batch, target):
        logits = model(batch.x)
        return self.loss_fn(logits, target, batch.labels), logits


class SelfDistillation(Method):
    """PS-KD: targets from the model's own predictions of the previous epoch."""

    def __init__(self, labels: Tensor, num_classes: int, alpha: float, epochs: int):
        self.loss_fn = PSKDLoss(PastPredictions(labels, num_classes), LinearRamp(alpha, epochs))

    def loss(self, model, batch, target):
        logits = model(batch.x)
        return self.loss_fn(logits, batch.labels, batch.indices, batch.epoch), logits

    def after_step(self, indices, logits):
        self.loss_fn.remember(indices, logits)

    def state_dict(self):
        return {"memory": self.loss_fn.memory.state_dict()}

    def load_state_dict(self, state):
        self.loss_fn.memory.load_state_dict(state["memory"])


class TwoViews(Method):
    """Cross-entropy on two augmented views plus a divergence between their predictions."""

    def __init__(self, consistency: TwoViewKL, max_shift: int, noise_std: float):
        self.consistency, self.max_shift, self.noise_std = consistency, max_shift, noise_std

    def loss(self, model, batch, target):
        generators = [torch.Generator().manual_seed(seed) for seed in batch.seeds]  # per example: 2 processes = 1
        views = [augment(batch.x, generators, max_shift=self.max_shift, noise_std=self.noise_std) for _ in "12"]
        logits_1, logits_2 = model(torch.cat(views)).chunk(2)  # one forward for both views
        ce = 0.5 * (F.cross_entropy(logits_1, batch.labels) + F.cross_entropy(logits_2, batch.labels))
        return ce + self.consistency(logits_1, logits_2), logits_1


class SubclassStudent(nn.Module):
    """A student with S outputs per class (class-major): ``forward(x)`` gives the class
    log-probabilities :math:`\\log\\sum_s q_{c,s}` (a valid logit vector for the evaluation),
    ``forward(x, subclasses=True)`` the C·S logits."""

    def __init__(self, network: nn.Module, num_classes: int):
        super().__init__()
        self.network, self.num_classes = network, num_classes

    def forward(self, x: Tensor, subclasses: bool = False) -> Tensor:
        logits = self.network(x)
        return logits if subclasses else class_log_probs(logits, self.num_classes)


def _last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("lelp needs a teacher whose output layer is an nn.Linear (its input is the embedding)")
    return layers[-1]


@torch.no_grad()
def _embeddings_and_logits(teacher: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's penultimate embedding (the input of its last linear layer) and its logits."""
    captured = []
    handle = _last_linear(teacher).register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        logits = teacher(x)
    finally:
        handle.remove()
    return captured[-1], logits


class LELP(Method):
    """Few-class distillation on pseudo-subclasses from linear projections of the teacher's
    embeddings (:func:`divreg.targets.fit_subclass_projection`; Loo et al. 2024, arXiv
    2409.20449): the projections are fitted once on the training set's teacher embeddings (the
    random rotation drawn from the student's seed), the student has S outputs per class and is
    trained by cross-entropy to :math:`p^T_c\\,\\mathrm{softmax}_s(z_{c,s}/\\beta)`, plus ``weight``
    times the label cross-entropy of its class probabilities (the paper: 0)."""

    def __init__(self, teacher: nn.Module, data: ClassificationData, *, subclasses: int, beta: float,
                 temperature: float, weight: float, null_space: bool, rotate: bool, seed: int):
        self.teacher, self.num_classes, self.subclasses = teacher.eval(), data.num_classes, subclasses
        self.beta, self.temperature, self.weight = beta, temperature, weight
        device = next(teacher.parameters()).device
        embeddings = torch.cat([_embeddings_and_logits(teacher, data.x_train[i:i + 512].to(device))[0].cpu()
                                for i in range(0, len(data.x_train), 512)])
        self.projection = fit_subclass_projection(embeddings, data.y_train, _last_linear(teacher).weight.cpu(),
                                                  subclasses, null_space=null_space, rotate=rotate, seed=seed)

    def outputs(self, num_classes):
        return num_classes * self.subclasses

    def student(self, network, num_classes):
        return SubclassStudent(network, num_classes)

    def loss(self, model, batch, target):
        self.teacher.to(batch.x.device)
        embeddings, teacher_logits = _embeddings_and_logits(self.teacher, batch.x)
        log_target = self.projection.log_targets(embeddings.cpu(), teacher_logits.cpu(), beta=self.beta,
                                                 temperature=self.temperature).to(batch.x.device, torch.float32)
        logits = model(batch.x, subclasses=True)  # (B, C*S)
        distill = cross_entropy(logits.float(), log_target).mean()  # H(p, q) over the C*S subclasses
        class_log_p = class_log_probs(logits.float(), self.num_classes)
        loss = (1 - self.weight) * distill + self.weight * F.nll_loss(class_log_p, batch.labels) \
            if self.weight else distill
        return loss, class_log_p


class SpatialAugmentor(nn.Module):
    """HARD's augmentor with spatial transformations: from each image, a small network predicts
    a bounded affine transform (a rotation of at most ``max_rotation`` radians, a shift of at most
    ``max_shift`` of the half-width, a log-scale of at most ``max_scale``), applied by
    ``grid_sample``; it starts near the identity (the last layer's weights small, N(0, 0.01²), not
    zero: at exactly the identity every sample falls on a pixel centre, where bilinear
    interpolation has a kink and its one-sided gradient points nowhere useful)."""

    def __init__(self, input_shape: tuple[int, ...], max_rotation: float, max_shift: float, max_scale: float):
        super().__init__()
        features = int(torch.tensor(input_shape).prod())
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 4))
        nn.init.normal_(self.net[-1].weight, std=0.01)
        nn.init.zeros_(self.net[-1].bias)
        self.bounds = torch.tensor([max_rotation, max_shift, max_shift, max_scale])

    def transform(self, x: Tensor, raw: Tensor) -> Tensor:
        """``x`` (B, C, H, W) under the affine transforms of ``raw`` (B, 4) in [-1, 1]."""
        angle, dx, dy, log_scale = (raw * self.bounds.to(raw.device)).unbind(-1)
        scale = log_scale.exp()
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos, -sin, dx], -1), torch.stack([sin, cos, dy], -1)], -2)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x, torch.tanh(self.net(x)))


class HARD(Method):
    """HARD: hard augmentations for robust distillation (Nix, Burg and Sinz, "HARD: Hard
    Augmentations for Robust Distillation", 2023, arXiv 2305.14890; the official repository,
    github.com/sinzlab/HARD, holds no code). An augmentor is trained to produce inputs on which
    teacher and student disagree while the teacher stays right; the student is distilled on the
    clean batch and on the augmented one. The paper's exact losses, weights and schedule were not
    available to us; ours, each an option with its default:

    - augmentor (one Adam step per student step, lr ``augmentor_lr``):
      :math:`\\min_\\phi\\; -\\mathrm{KL}(p_T(\\tilde x) \\| p_S(\\tilde x)) + \\lambda_t\\,
      \\mathrm{CE}(p_T(\\tilde x), y)`, :math:`\\tilde x = g_\\phi(x)` a bounded affine transform
      (:class:`SpatialAugmentor`), :math:`\\lambda_t` = ``teacher_weight``;
    - student: the KD loss (``divergence``, ``temperature``, ``weight`` as ``kd``) on x plus
      ``augmented_weight`` times the same loss on :math:`\\tilde x` (detached, the teacher
      re-scored on it);
    - ``augmentor="random"``: uniformly random transforms within the same bounds, nothing learned
      (the "KD with random augmentations" baseline).

    The augmentor's weights and optimizer state are saved in the checkpoints; its initialization is a
    function of the seed, the random baseline's transforms of each example's seed; under several
    processes the augmentor's gradients are averaged over them, so every process holds the same
    augmentor (each process's loss is its local batch's mean: the average is the global batch's)."""

    needs_teacher = True

    def __init__(self, spec: ClassifierMethod, data: ClassificationData, seed: int, options: dict):
        from ...losses import KDLoss

        if len(data.input_shape) != 3:
            raise ValueError(f"methods.{spec.name}: hard's spatial augmentor needs image inputs (C, H, W), got "
                             f"inputs of shape {data.input_shape}")
        self.kd = KDLoss(spec.divergence, temperature=spec.temperature, kd_weight=spec.weight, **spec.divergence_options)
        self.mode, self.teacher_weight = options["augmentor"], float(options["teacher_weight"])
        self.augmented_weight = float(options["augmented_weight"])
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.augmentor = SpatialAugmentor(data.input_shape, float(options["max_rotation"]), float(options["max_shift"]),
                                          float(options["max_scale"]))
        torch.random.set_rng_state(generator_state)
        self.optimizer = torch.optim.Adam(self.augmentor.parameters(), lr=float(options["augmentor_lr"]))
        self.teacher: Optional[nn.Module] = None

    def bind_teacher(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def _augment(self, model, batch) -> Tensor:
        self.augmentor.to(batch.x.device)
        if self.mode == "random":  # each example's transform from its own seed: the same in any process
            raw = torch.stack([torch.rand(4, generator=torch.Generator().manual_seed(seed)) for seed in batch.seeds])
            return self.augmentor.transform(batch.x, raw.mul_(2).sub_(1).to(batch.x.device))
        # one augmentor step: raise the teacher-student disagreement, keep the teacher right
        augmented = self.augmentor(batch.x)
        teacher_logits = self.teacher(augmented)
        student_logits = model(augmented)
        disagreement = forward_kl(student_logits, teacher_logits).mean()  # KL(p_T || p_S) per example
        loss = -disagreement + self.teacher_weight * F.cross_entropy(teacher_logits, batch.labels)
        self.optimizer.zero_grad()
        grads = torch.autograd.grad(loss, list(self.augmentor.parameters()))
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one augmentor in every process
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad /= torch.distributed.get_world_size()
        for parameter, grad in zip(self.augmentor.parameters(), grads):
            parameter.grad = grad
        self.optimizer.step()
        with torch.no_grad():
            return self.augmentor(batch.x)

    def loss(self, model, batch, target):
        if self.teacher is None:
            raise RuntimeError("HARD needs the teacher bound (bind_teacher) before training")
        augmented = self._augment(model, batch).detach()
        logits = model(batch.x)
        with torch.no_grad():
            augmented_target = self.teacher(augmented)
        loss = self.kd(logits, target, batch.labels) + self.augmented_weight * self.kd(model(augmented),
                                                                                          augmented_target, batch.labels)
        return loss, logits

    def state_dict(self):
        return {"augmentor": self.augmentor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.augmentor.load_state_dict(state["augmentor"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_method(spec: ClassifierMethod, data: ClassificationData, epochs: int, teacher: Optional[nn.Module] = None,
                seed: int = 0, *, check_only: bool = False) -> Method:
    """The objective a method entry describes (``teacher`` and ``seed``: what LELP fits its
    projections with and HARD scores its augmentations with). ``check_only``: ``teacher`` is an
    untrained network of the teacher's architecture, as when a config is checked before training;
    LELP's options are checked against its embedding width and a cross-entropy stand-in returned."""
    if spec.kind == "hard":
        method = HARD(spec, data, seed, spec.options)
        if teacher is not None and not check_only:
            method.bind_teacher(teacher.eval())
        return method
    if spec.kind == "lelp":
        options = spec.options
        width = _last_linear(teacher).in_features if teacher is not None else None
        if width is not None and options["subclasses"] > width:
            raise ValueError(f"methods.{spec.name}.options.subclasses={options['subclasses']} exceeds the teacher's "
                             f"embedding width {width} (the input of its output layer): at most {width}")
        if teacher is None or check_only:
            return Method()
        return LELP(teacher, data, subclasses=options["subclasses"], beta=float(options["beta"]),
                    temperature=spec.temperature, weight=spec.weight, null_space=options["null_space"],
                    rotate=options["rotate"], seed=seed)
    if spec.kind == "ce":
        return Method()
    if spec.kind == "label_smoothing":
        return LabelSmoothing(spec.weight)
    if spec.kind == "sinkd":
        return Distillation(SinKDLoss(temperature=spec.temperature, kd_weight=spec.weight, **spec.options))
    if spec.kind == "pskd":
        return SelfDistillation(data.y_train, data.num_classes, spec.weight, epochs)
    if spec.kind == "two_view":
        options = {"augment_shift": 1, "augment_noise": 0.1, **spec.options}
        consistency = TwoViewKL(weight=spec.weight, divergence=spec.divergence, **spec.divergence_options)
        return TwoViews(consistency, options["augment_shift"], options["augment_noise"])
    options = dict(spec.divergence_options)
    if spec.divergence == "topk_kl":
        options["k"] = min(options.get("k", data.num_classes), data.num_classes)
    return Distillation(KDLoss(spec.divergence, temperature=spec.temperature, kd_weight=spec.weight, **options))
