"""Shapers: each per-paper option of GRPO as a small object built once (from a recipe's config),
that takes a :class:`~divreg.rl.Rollout` and returns it shaped (``shaper(rollout, context)``),
so a trainer runs a list of them and never branches on the papers. Shapers that need the global
batch (group advantages, APO's per-group statistics) gather through ``context.gather``.

Order matters and is the order of :func:`divreg.recipes.rl` 's list: reward shapers (CTRL, the
KL in the reward), then the group advantages, then what reads them (STCR, DADS, Lp-Reg)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Union

import torch
from torch import Tensor

from ..fused import token_logprobs
from ..targets import DenseLogits, HiddenStates
from ._advantages import group_advantages
from ._apo import dads_kl_weights, stcr_advantages
from ._ctrl import calibrated_rewards, ctrl_transform
from ._lp_reg import lp_reg_token_mask, min_p_proxy_logprobs
from ._rapo import reweighted_reference_logits
from ._rollout import IGNORE_INDEX, Rollout


@dataclass
class ShapingContext:
    """What a shaper may read besides the rollout (one generated batch on this process)."""

    group_size: int  # G: completions per prompt, contiguous in the rollout
    gather: Callable[[Tensor], Tensor]  # (B, ...) on this process -> (processes * B, ...), rank-major
    rank: int  # this process's index (its rows of a gathered tensor)
    temperature: float = 1.0  # of the sampling and of every log-prob
    kl_coef: float = 0.0  # beta at this step
    policy_signal: Optional[Union[DenseLogits, HiddenStates]] = None  # the sampling policy's, detached
    ref_signal: Optional[Union[DenseLogits, HiddenStates]] = None  # the reference's, detached
    # CTRL: the rewards of ``n`` fresh completions of the reference per prompt of the rollout, (prompts * n,)
    reference_rewards: Optional[Callable[[int], Tensor]] = None
    # values to log as global means over a mask: {name: (values (B, T), mask (B, T) bool)}
    metrics: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def local(self, values: Tensor, rows: int) -> Tensor:
        """This process's rows of a gathered tensor."""
        return values[self.rank * rows:(self.rank + 1) * rows]


class Shaper(Protocol):
    """One shaping step: ``shaper(rollout, context)`` returns the rollout shaped (a new one)."""

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout: ...


@dataclass(frozen=True)
class CTRLCalibration:
    """InfAlign's CTRL (arXiv 2412.19792): each reward calibrated against ``samples`` reference
    completions of the same prompt (:func:`calibrated_rewards`), then transformed
    (:func:`ctrl_transform`); logged as ``ctrl_reward``."""

    kind: str = "identity"
    t: float = 1.0
    samples: int = 8

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        reference = context.reference_rewards(self.samples).view(-1, self.samples)  # (prompts, n)
        table = calibrated_rewards(rollout.rewards.view(-1, context.group_size), reference.to(rollout.rewards))
        rewards = ctrl_transform(table, self.kind, self.t).reshape(-1)
        context.metrics["ctrl_reward"] = (rewards[:, None], torch.ones_like(rewards[:, None], dtype=torch.bool))
        return rollout.replace(rewards=rewards)


@dataclass(frozen=True)
class KLPenaltyInReward:
    """The KL in the reward (verl ``use_kl_in_reward``): ``loss.penalized_rewards`` of a
    :class:`~divreg.losses.GRPOLoss` (k1 summed per completion, times beta, subtracted)."""

    loss: object  # a GRPOLoss with kl_placement="reward"

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        if rollout.ref_logprobs is None:
            return rollout
        rewards = self.loss.penalized_rewards(rollout.rewards, rollout.logprobs, rollout.ref_logprobs, rollout.mask,
                                              context.kl_coef)
        return rollout.replace(rewards=rewards)


@dataclass(frozen=True)
class RAPOReference:
    """RAPO (arXiv 2510.03865): the KL's target is the reference reweighted per completion,
    :math:`\\phi = \\mathrm{clip}(r / r_{max}, 0, 1)` from the *task* reward; sets ``ref_phi`` and
    the target's log-probs of the sampled tokens (see :func:`kl_target_signal`)."""

    reward_scale: float  # r_max: the largest task reward (the sum of the reward weights)

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        if not isinstance(context.ref_signal, DenseLogits):
            raise ValueError("RAPO reweights the reference's full logits: the reference must give DenseLogits "
                             "(fused=false)")
        phi = (rollout.task_rewards / self.reward_scale).clamp(0, 1)  # (B,)
        target = kl_target_signal(context.ref_signal, phi, context.temperature)
        ref_logprobs = token_logprobs(target.logits, rollout.targets, temperature=context.temperature,
                                      ignore_index=IGNORE_INDEX)
        return rollout.replace(ref_phi=phi, ref_logprobs=ref_logprobs)


@dataclass(frozen=True)
class GroupAdvantages:
    """GRPO's group-relative advantages of the gathered rewards (:func:`group_advantages`)."""

    scale: str = "group"
    eps: float = 1e-4

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        rewards = context.gather(rollout.rewards)
        advantages = group_advantages(rewards, context.group_size, self.scale, self.eps)
        return rollout.replace(advantages=context.local(advantages, len(rollout)))


@dataclass(frozen=True)
class STCR:
    """APO's STCR: longer wrong answers' advantages scaled up, per group (:func:`stcr_advantages`)."""

    base: float = 1.00001

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        gathered = [context.gather(t) for t in (rollout.advantages, rollout.mask.sum(-1).double(), rollout.correct)]
        advantages = stcr_advantages(*gathered, context.group_size, base=self.base)
        return rollout.replace(advantages=context.local(advantages, len(rollout)))


@dataclass(frozen=True)
class DADS:
    """APO's DADS: a KL weight per completion from its group's difficulty (:func:`dads_kl_weights`)."""

    scale: float = 2.718281828459045

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        weights = dads_kl_weights(context.gather(rollout.correct), context.gather(rollout.advantages),
                                  context.group_size, scale=self.scale)
        return _times_kl_weights(rollout, context.local(weights, len(rollout)))


@dataclass(frozen=True)
class MaskCorrectKL:
    """KDRL's reward-guided masking: no KL term on correct completions (their tokens still count
    in the loss's normalization)."""

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        return _times_kl_weights(rollout, 1.0 - rollout.correct)


@dataclass(frozen=True)
class LpRegSelection:
    """Lp-Reg (arXiv 2510.03222): the min-p proxy of the sampling policy and the low-probability
    tokens of negative completions it regularizes (:func:`min_p_proxy_logprobs`,
    :func:`lp_reg_token_mask`); logged as ``lp_reg_tokens``."""

    kappa: float = 0.02
    rho: float = 0.01

    def __call__(self, rollout: Rollout, context: ShapingContext) -> Rollout:
        if not isinstance(context.policy_signal, DenseLogits):
            raise ValueError("Lp-Reg's min-p proxy needs the sampling policy's full logits (fused=false)")
        proxy = min_p_proxy_logprobs(context.policy_signal.logits, rollout.targets, kappa=self.kappa,
                                     temperature=context.temperature, ignore_index=IGNORE_INDEX)
        selected = lp_reg_token_mask(rollout.logprobs, proxy, rollout.advantages, rollout.mask, rho=self.rho)
        context.metrics["lp_reg_tokens"] = (selected.double(), rollout.mask)
        return rollout.replace(lp_selected=selected, proxy_logprobs=proxy)


def kl_target_signal(ref_signal: Union[DenseLogits, HiddenStates], phi: Optional[Tensor],
                     temperature: float) -> Union[DenseLogits, HiddenStates]:
    """The KL's target: the reference's signal, or with RAPO's ``phi`` (B,) the reweighted
    reference as logits *before* the temperature (the divergences divide by it again):
    ``T * phi * log softmax(ref / T)``.

    Example:
        >>> import torch
        >>> from divreg.targets import DenseLogits
        >>> ref = DenseLogits(torch.tensor([[[0.8, 0.2]]]).log())
        >>> kl_target_signal(ref, None, 1.0) is ref  # no phi: the reference itself
        True
        >>> target = kl_target_signal(ref, torch.tensor([0.5]), temperature=2.0)
        >>> # softmax(ref / 2) = (2/3, 1/3), to the power 1/2: sqrt(2) : 1
        >>> [round(v, 4) for v in (target.logits / 2.0).softmax(-1).flatten().tolist()]
        [0.5858, 0.4142]
    """
    if phi is None:
        return ref_signal
    logits = reweighted_reference_logits(ref_signal.logits, phi.to(ref_signal.logits.device), temperature=temperature)
    return DenseLogits(logits * temperature)


def _times_kl_weights(rollout: Rollout, weights: Tensor) -> Rollout:
    current = rollout.kl_weights if rollout.kl_weights is not None else torch.ones_like(weights)
    return rollout.replace(kl_weights=current * weights.to(current))
