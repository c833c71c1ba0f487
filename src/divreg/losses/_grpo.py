r"""GRPO-family policy optimization with a KL to a frozen reference, every design choice an
explicit option: advantages, the clipped surrogate (token or sequence importance ratio), the loss
aggregation, and the KL's estimator, direction, placement and coefficient.

References:
    Shao et al. "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
    Models" (GRPO), 2024, arXiv 2402.03300.
    Yu et al. "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", 2025, arXiv
    2503.14476 (clip-higher, token-level loss).
    Liu et al. "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO), 2025,
    arXiv 2503.20783.
    Zheng et al. "Group Sequence Policy Optimization" (GSPO), 2025, arXiv 2507.18071.
    Schulman. "Approximating KL Divergence", 2020 (k1, k2, k3).
    Official code compared: TRL ``GRPOTrainer`` (huggingface/trl), verl ``core_algos.py``
    (volcengine/verl).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..estimators import k1, k2, k3, k3_k2grad
from ..reductions import per_sequence_mean, sum_over_items
from ..targets import DenseLogits, HiddenStates, signal_divergence
from ._lp_reg import LpReg, lp_reg_penalty
from ._sampler import check_sampler_correction, sampler_weights

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
IMPORTANCE_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3", "k3_k2grad", "exact")
KL_DIRECTIONS = ("reverse", "forward")
KL_PLACEMENTS = ("loss", "reward")
# verl's clamps (kl_penalty): the log-ratio of k3 to +-20 before the exp, the value to +-10
_LOG_RATIO_CLAMP, _KL_VALUE_CLAMP = 20.0, 10.0


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def kl_per_token(logprobs: Tensor, ref_logprobs: Optional[Tensor], estimator: str = "k3", direction: str = "reverse",
                 clamp: bool = False, exact: Optional[Tensor] = None) -> Tensor:
    r"""The per-token KL term, as used in a loss (its gradient flows through ``logprobs``).

    ======================  =================================  ======================================
    ``estimator``           value estimates                    gradient as a loss (on-policy samples)
    ======================  =================================  ======================================
    ``k1``  (r)             KL(pi || ref), unbiased, can be <0  0 in expectation: use it in the reward
    ``k2``  (r^2/2)         biased, >= 0                        grad KL(pi || ref) (reverse)
    ``k3``  (e^-r - 1 + r)  KL(pi || ref), unbiased, >= 0       grad KL(ref || pi) (*forward*)
    ``k3_k2grad``           k3's value                          grad KL(pi || ref) (reverse)
    ``exact``               the full-vocabulary divergence      its exact gradient
    ======================  =================================  ======================================

    with :math:`r = \log\pi(y_t) - \log\pi_{ref}(y_t)` on the sampled token. ``direction``:
    ``"reverse"`` is KL(pi || ref); ``"forward"`` is KL(ref || pi), available as ``exact`` (pass
    the per-token forward KL) or as ``k3`` (its gradient is the forward KL's; its value estimates
    the reverse KL). k1, k2 and k3_k2grad have no forward form from on-policy samples and raise.
    ``clamp`` applies verl's clamps to the k3 forms (the log-ratio to +-20 before the exp, the
    value to +-10; verl clamps no other estimator; off by default, as TRL clamps nothing). For
    ``k3`` the clamped value is the loss, so its gradient is 0 where a clamp acts (verl ``k3``).
    For ``k3_k2grad`` only the *detached value* is clamped, as verl's ``"k3+"`` (``kl_penalty``,
    verl PR #6058): :math:`\tfrac12 r^2 - sg(\tfrac12 r^2) + sg(\mathrm{clamp}(k3(\mathrm{clamp}(r))))`,
    so the gradient stays k2's, :math:`r`, at every r.

    These per-token gradients hold each position's context fixed; summed over a sequence they
    are *not* the gradient of the sequence-level KL (which also moves the probability of the
    contexts); only k1 in the reward, summed over the sequence, gives that (see
    :class:`GRPOLoss`, ``kl_placement``).

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the policy (with gradient).
        ref_logprobs: (B, T) under the reference (no gradient); unused for ``exact``.
        estimator, direction, clamp: see above.
        exact: (B, T) the exact per-token divergence (with gradient) for ``estimator="exact"``.

    Returns:
        (B, T) per-token values.

    Example:
        >>> import math, torch
        >>> logprobs, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])  # r = log 2
        >>> [round(float(kl_per_token(logprobs, ref, e)), 4) for e in ("k1", "k2", "k3")]  # r, r^2/2, e^-r - 1 + r
        [0.6931, 0.2402, 0.1931]
    """
    _check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    _check_choice("kl_direction", direction, KL_DIRECTIONS)
    if estimator == "exact":
        if exact is None:
            raise ValueError("kl_estimator='exact' needs the exact per-token KL (full-vocabulary divergence of the "
                             "policy and the reference at each position)")
        values = exact
    else:
        if ref_logprobs is None:
            raise ValueError(f"kl_estimator={estimator!r} needs the reference's log-probs of the sampled tokens")
        if direction == "forward" and estimator != "k3":
            raise ValueError(f"kl_direction='forward' is available as kl_estimator='exact' or 'k3' (whose gradient as a "
                             f"loss is the forward KL's); {estimator!r} gives the reverse KL's gradient (k2, k3_k2grad) "
                             "or none (k1)")
        ref = ref_logprobs.detach()
        if clamp and estimator == "k3_k2grad":  # verl's "k3+": only the detached value is clamped
            half_square = k2(logprobs, ref)  # (B, T) 0.5 r^2, unclamped: its gradient is r everywhere
            return half_square - half_square.detach() + _clamped_k3(logprobs.detach(), ref)
        if clamp and estimator == "k3":
            return _clamped_k3(logprobs, ref)
        values = {"k1": k1, "k2": k2, "k3": k3, "k3_k2grad": k3_k2grad}[estimator](logprobs, ref)
    return values


def _clamped_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """verl's clamped k3: the log-ratio to +-20 before the exp, the value to +-10 (zero gradient
    where either clamp acts)."""
    log_ratio = (logprobs - ref_logprobs.to(logprobs.dtype)).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return k3(logprobs, logprobs - log_ratio).clamp(-_KL_VALUE_CLAMP, _KL_VALUE_CLAMP)


def loss_aggregation(loss_agg: str, max_completion_length: Optional[int] = None) -> tuple[Callable, Callable]:
    r"""``(reduction, count)`` for a loss aggregation: the loss is
    ``reduction(per_token, mask, count(tokens, sequences))`` with the *global* counts of the batch
    (all accumulation micro-batches, all processes), so each is the same for 1 x 8, 4 x 2 and
    2 processes x 4.

    - ``token_mean``: :math:`\sum_{i,t} \ell_{it} / \sum_i |y_i|`, every token of the global
      batch weighs the same (DAPO; TRL ``loss_type="dapo"``, verl ``token-mean``).
    - ``seq_mean_token_mean``: :math:`\frac{1}{S}\sum_i \frac{1}{|y_i|}\sum_t \ell_{it}`, GRPO's
      original (TRL ``"grpo"``, verl ``seq-mean-token-mean``): long answers weigh less per token.
    - ``seq_mean_token_sum``: :math:`\frac{1}{S}\sum_i \sum_t \ell_{it}` (verl ``seq-mean-token-sum``).
    - ``seq_mean_token_sum_norm``: :math:`\frac{1}{S L}\sum_i \sum_t \ell_{it}` with ``L =
      max_completion_length``, a constant (Dr. GRPO). TRL's ``"dr_grpo"`` is exactly this
      (token sum / (batch size x ``max_completion_length``)). verl's ``seq-mean-token-sum-norm``
      is not the same everywhere: until verl PR #5417 (February 2026) it divided the token sum by
      the constant alone, :math:`\frac{1}{L}\sum_{i,t}\ell_{it}`, *without* the 1/S (S times this
      one); since then it divides by the global sequence count too, as here, its constant
      defaulting to the padded response length. The official Dr. GRPO code, oat, divides by
      ``generate_max_length``.

    ``S`` counts the sequences with at least one completion token.

    Example:
        >>> import torch
        >>> per_token = torch.tensor([[1.0, 3.0, 0.0], [6.0, 0.0, 0.0]])
        >>> mask = torch.tensor([[True, True, False], [True, False, False]])  # 3 tokens, 2 sequences
        >>> reduction, count = loss_aggregation("token_mean")
        >>> round(float(reduction(per_token, mask, count(3, 2))), 4)  # (1 + 3 + 6) / 3
        3.3333
        >>> reduction, count = loss_aggregation("seq_mean_token_mean")
        >>> float(reduction(per_token, mask, count(3, 2)))  # ((1 + 3) / 2 + 6) / 2
        4.0
    """
    _check_choice("loss_agg", loss_agg, LOSS_AGGREGATIONS)
    if loss_agg == "seq_mean_token_sum_norm" and (not isinstance(max_completion_length, int)
                                                   or max_completion_length < 1):
        raise ValueError("loss_agg='seq_mean_token_sum_norm' divides by a constant, the maximum completion length: "
                         f"pass max_completion_length (a positive int), got {max_completion_length!r}")
    if loss_agg == "token_mean":
        return sum_over_items, lambda tokens, sequences: tokens
    if loss_agg == "seq_mean_token_mean":
        return per_sequence_mean, lambda tokens, sequences: sequences
    if loss_agg == "seq_mean_token_sum":
        return sum_over_items, lambda tokens, sequences: sequences
    return sum_over_items, lambda tokens, sequences: sequences * max_completion_length


class GRPOOutput(NamedTuple):
    """The loss and its detached parts, each aggregated like the loss."""

    loss: Tensor
    policy_loss: Tensor  # the clipped surrogate part
    kl: Tensor  # the KL term before its coefficient (0 when the coefficient is 0 or KL is in the reward)
    clip_fraction: Tensor  # fraction of completion tokens where the clip is active (no gradient), this micro-batch


class GRPOLoss(nn.Module):
    r"""The GRPO-family loss on one micro-batch of completions.

    .. math::
        \ell_{it} = -\min\big(\rho_{it} A_i,\ \mathrm{clip}(\rho_{it}, 1-\epsilon_{low}, 1+\epsilon_{high}) A_i\big)
        + \beta\, \mathrm{KL}_{it} \quad(\text{KL in the loss}),

    aggregated by ``loss_agg`` (:func:`loss_aggregation`). The importance ratio is per token,
    :math:`\rho_{it} = \pi(y_{it}) / \pi_{old}(y_{it})`, or per sequence (GSPO),
    :math:`\rho_{i} = \exp\big(\frac{1}{|y_i|}\sum_t \log\frac{\pi(y_{it})}{\pi_{old}(y_{it})}\big)`
    for every token of sequence i. With one update per batch (``num_iterations=1``) the old
    log-probs are the current ones detached, so :math:`\rho = 1` with the gradient of
    :math:`\log\pi`. Defaults: :math:`\epsilon_{low} = \epsilon_{high} = 0.2` (GRPO, TRL); DAPO's
    clip-higher uses :math:`\epsilon_{high} = 0.28`.

    ``kl_placement``:

    - ``"loss"``: :math:`\beta\,\mathrm{KL}_{it}` is added to every token's loss (GRPO, TRL,
      verl ``use_kl_loss``); its gradient is the estimator's per-token gradient of
      :func:`kl_per_token` (k3: the *forward* KL's; k2 / k3_k2grad: the reverse KL's), each
      position's context held fixed. Summed over a sequence this is not the gradient of the
      sequence-level KL(pi || ref): that one also has the term
      :math:`E[\sum_t \mathrm{KL}_{t}(\ldots) \nabla\log\pi(y_{<t})]` through the contexts, which
      per-token losses drop.
    - ``"reward"``: k1 per token, :math:`\beta\,(\log\pi - \log\pi_{ref})`, detached, is
      subtracted from the reward before the advantages (verl ``use_kl_in_reward``, the
      RLHF/PPO way); for GRPO's outcome advantages the per-token penalties sum to one per
      sequence, :math:`R_i - \beta\sum_t k1_{it}`. Through the plain policy gradient (the
      penalized reward as the advantage) this gives exactly
      :math:`-\beta\nabla\mathrm{KL}(\pi \| \pi_{ref})` of the *sequence* distribution (context
      terms included), in expectation. GRPO's group baseline scales it by (G-1)/G, and
      ``scale="group"`` divides each group's penalized rewards by their std: the effective
      coefficient is then :math:`\beta/\sigma_{group}`, and in a group whose task rewards are all
      equal the advantages are the k1 differences alone, normalized to unit size. Use
      ``scale="none"`` for the coefficient to mean what it says. Apply it with
      :meth:`penalized_rewards`; this loss then has no KL term.

    Args:
        epsilon_low, epsilon_high: the clip range of the ratio.
        importance_sampling: "token" or "sequence" (GSPO).
        loss_agg: see :func:`loss_aggregation`; None (default): ``"token_mean"`` for a token
            ratio (DAPO, TRL's default), ``"seq_mean_token_mean"`` for a sequence ratio. GSPO
            (arXiv 2507.18071, eq. 5) is :math:`\frac1G\sum_i \min(s_i A_i, \mathrm{clip}(s_i) A_i)`,
            one term per sequence; since :math:`s_i` is the same at every token of sequence i, any
            other aggregation weights sequence i by its length (``token_mean``: by
            :math:`|y_i| G / \sum_j |y_j|`), so a sequence ratio refuses them (verl's ``gspo``
            policy loss forces ``seq-mean-token-mean`` likewise; TRL warns).
        max_completion_length: the constant of ``seq_mean_token_sum_norm``.
        kl_estimator, kl_direction, kl_clamp: see :func:`kl_per_token`. ``"exact"`` is computed
            here from the policy's and the reference's signals (:meth:`forward`'s
            ``policy_signal``, ``ref_signal``): dense logits through the divergence, hidden states
            through the fused kernel, which reduces like the loss.
        kl_placement: "loss" or "reward" (see above).
        temperature: the sampling temperature, at which the exact KL compares the two policies.
        sampler_correction, sampler_cap, sampler_floor: the correction of a sampler whose
            log-probs differ from the trainer's (:func:`~divreg.losses.sampler_weights`:
            ``"tis"``, ``"mis"`` or ``"none"``, the default); it weights each token's clipped
            surrogate by :math:`w_t` computed from ``old_logprobs`` (the trainer's at sampling
            time) and :meth:`forward`'s ``sampler_logprobs``; the KL term is not weighted.
    """

    def __init__(self, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2, importance_sampling: str = "token",
                 loss_agg: Optional[str] = None, max_completion_length: Optional[int] = None,
                 kl_estimator: str = "k3", kl_direction: str = "reverse", kl_placement: str = "loss",
                 kl_clamp: bool = False, temperature: float = 1.0, sampler_correction: str = "none",
                 sampler_cap: float = 2.0, sampler_floor: Optional[float] = None):
        super().__init__()
        check_sampler_correction(sampler_correction, sampler_cap, sampler_floor)
        self.sampler_correction, self.sampler_cap, self.sampler_floor = (sampler_correction, float(sampler_cap),
                                                                         sampler_floor)
        for name, value in (("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= (
                    1 if name == "epsilon_low" else math.inf) or math.isinf(value):
                raise ValueError(f"{name} must be a number in [0, {'1]' if name == 'epsilon_low' else 'inf)'}, got "
                                 f"{value!r}")
        _check_choice("importance_sampling", importance_sampling, IMPORTANCE_LEVELS)
        _check_choice("kl_placement", kl_placement, KL_PLACEMENTS)
        _check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
        _check_choice("kl_direction", kl_direction, KL_DIRECTIONS)
        if kl_placement == "reward" and (kl_estimator != "k1" or kl_direction != "reverse"):
            raise ValueError("kl_placement='reward' subtracts k1 = log pi - log ref per token (the reverse KL's "
                             f"estimate); set kl_estimator='k1' and kl_direction='reverse', got {kl_estimator!r}, "
                             f"{kl_direction!r}")
        if kl_placement == "loss" and kl_estimator == "k1":
            raise ValueError("k1 as a loss has zero gradient in expectation: put it in the reward "
                             "(kl_placement='reward') or use k2, k3 or k3_k2grad in the loss")
        if kl_direction == "forward" and kl_estimator not in ("k3", "exact"):
            raise ValueError("kl_direction='forward' is available as kl_estimator='exact' or 'k3'")
        if loss_agg is None:  # GSPO averages per sequence; token-level GRPO/DAPO per token of the batch
            loss_agg = "seq_mean_token_mean" if importance_sampling == "sequence" else "token_mean"
        if importance_sampling == "sequence" and loss_agg != "seq_mean_token_mean":
            raise ValueError(f"importance_sampling='sequence' (GSPO) averages the sequences' terms with equal weight "
                             f"(loss_agg='seq_mean_token_mean', the default for it); loss_agg={loss_agg!r} would weight "
                             "each sequence's term by its length, which is not GSPO: leave loss_agg unset (None; loss_agg=null in a "
                             "config) or set it to 'seq_mean_token_mean'")
        self.reduction, self.count = loss_aggregation(loss_agg, max_completion_length)
        self.epsilon_low, self.epsilon_high = float(epsilon_low), float(epsilon_high)
        self.importance_sampling, self.loss_agg = importance_sampling, loss_agg
        self.kl_estimator, self.kl_direction, self.kl_placement, self.kl_clamp = (kl_estimator, kl_direction,
                                                                                  kl_placement, kl_clamp)
        self.temperature = float(temperature)

    def penalized_rewards(self, rewards: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                          kl_coef: float) -> Tensor:
        r""":math:`R_i - \beta\sum_t k1_{it}` (detached) for ``kl_placement="reward"``; ``rewards`` as given otherwise."""
        if self.kl_placement != "reward" or kl_coef == 0:
            return rewards
        penalty = torch.where(mask, k1(logprobs.detach(), ref_logprobs.detach()), 0.0).sum(-1)
        return rewards - kl_coef * penalty.to(rewards.dtype)

    def forward(self, logprobs: Tensor, old_logprobs: Optional[Tensor], advantages: Tensor, mask: Tensor, *,
                tokens: Union[int, float, Tensor], sequences: Union[int, float, Tensor],
                ref_logprobs: Optional[Tensor] = None, kl_coef: float = 0.0,
                exact_kl: Optional[Tensor] = None, kl_weights: Optional[Tensor] = None,
                lp_reg: Optional[LpReg] = None, policy_signal: Optional[Union[DenseLogits, HiddenStates]] = None,
                ref_signal: Optional[Union[DenseLogits, HiddenStates]] = None,
                sampler_logprobs: Optional[Tensor] = None) -> GRPOOutput:
        """The micro-batch loss.

        Args:
            logprobs: (B, T) log-probs of the completion tokens under the policy (with gradient).
            old_logprobs: (B, T) under the policy that sampled them; None: ``logprobs.detach()``.
            advantages: (B,) one per completion.
            mask: (B, T) bool, True at completion tokens (prompt and padding False).
            tokens, sequences: the *global* numbers of completion tokens and of completions
                (see :func:`loss_aggregation`).
            ref_logprobs: (B, T) under the reference, for a sampled KL estimator.
            kl_coef: beta at this step (0: no KL term, no reference needed).
            exact_kl: (B, T) the exact per-token KL, for ``kl_estimator="exact"``; or, instead,
            policy_signal, ref_signal: the policy's (with gradient) and the reference's next-token
                signals at the same positions (:class:`~divreg.targets.DenseLogits` or
                :class:`~divreg.targets.HiddenStates`, one kind), from which the exact KL is computed.
            kl_weights: (B,) a weight per completion on its KL term (APO's DADS,
                :func:`~divreg.rl.dads_kl_weights`; 0/1 for KDRL's reward-guided masking);
                None: 1.
            lp_reg: Lp-Reg's tokens (:class:`~divreg.losses.LpReg`): at each selected token the
                clipped surrogate is replaced by the unclipped :math:`-A\rho` plus
                ``coef * lp_reg_penalty(log pi, log proxy)`` (aggregated with the rest).
            sampler_logprobs: (B, T) the sampler's own log-probs of the tokens (vLLM's processed
                log-probs), for ``sampler_correction`` "tis" or "mis".
        """
        if logprobs.dim() != 2 or mask.shape != logprobs.shape or mask.dtype != torch.bool:
            raise ValueError(f"logprobs must be (B, T) and mask a bool tensor of the same shape, got "
                             f"{tuple(logprobs.shape)} and {tuple(mask.shape)} {mask.dtype}")
        if advantages.shape != logprobs.shape[:1]:
            raise ValueError(f"advantages must have shape ({logprobs.shape[0]},), one per completion, got "
                             f"{tuple(advantages.shape)}")
        if not bool(mask.any(1).all()):
            empty = mask.any(1).logical_not().nonzero().squeeze(-1).tolist()
            raise ValueError(f"completion(s) {empty[:5]} of this batch have no token: every completion needs at least "
                             "one (EOS counts)")
        old = logprobs.detach() if old_logprobs is None else old_logprobs.detach()
        log_ratio = torch.where(mask, logprobs - old, 0.0)  # (B, T)
        if self.importance_sampling == "sequence":
            log_ratio = (log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)).expand_as(logprobs)
        ratio = log_ratio.exp()
        advantage = advantages.detach().to(ratio.dtype).unsqueeze(-1)  # (B, 1)
        clipped = ratio.clamp(1.0 - self.epsilon_low, 1.0 + self.epsilon_high)
        policy_values = -torch.min(ratio * advantage, clipped * advantage)  # (B, T)
        if lp_reg is not None:
            if lp_reg.selected.shape != mask.shape or lp_reg.proxy_logprobs.shape != mask.shape:
                raise ValueError(f"lp_reg.selected and lp_reg.proxy_logprobs must have shape {tuple(mask.shape)}")
            penalty = lp_reg_penalty(logprobs, lp_reg.proxy_logprobs.detach(), lp_reg.clamp)
            policy_values = torch.where(lp_reg.selected & mask, -ratio * advantage + lp_reg.coef * penalty,
                                        policy_values)
        if self.sampler_correction != "none":
            if sampler_logprobs is None or sampler_logprobs.shape != logprobs.shape:
                raise ValueError(f"sampler_correction={self.sampler_correction!r} needs sampler_logprobs of shape "
                                 f"{tuple(logprobs.shape)} (the sampler's log-probs of the tokens)")
            weights = sampler_weights(old, sampler_logprobs, self.sampler_correction, self.sampler_cap,
                                      self.sampler_floor)
            policy_values = policy_values * torch.where(mask, weights, 1.0).to(policy_values.dtype)
        count = self.count(tokens, sequences)
        policy = self.reduction(policy_values, mask, count)
        kl = torch.zeros((), dtype=policy.dtype, device=policy.device)
        loss = policy
        if kl_coef and self.kl_placement == "loss":
            if kl_weights is not None and kl_weights.shape != logprobs.shape[:1]:
                raise ValueError(f"kl_weights must have shape ({logprobs.shape[0]},), one per completion, got "
                                 f"{tuple(kl_weights.shape)}")
            weights = None if kl_weights is None else kl_weights.detach().unsqueeze(-1).expand(mask.shape)  # (B, T)
            if self.kl_estimator == "exact" and exact_kl is None:
                if policy_signal is None or ref_signal is None:
                    raise ValueError("kl_estimator='exact' needs the exact per-token KL (exact_kl) or the policy's and "
                                     "the reference's signals (policy_signal, ref_signal)")
                kl = signal_divergence(policy_signal, ref_signal, mask, temperature=self.temperature,
                                       divergence="forward_kl" if self.kl_direction == "forward" else "reverse_kl",
                                       token_weights=weights, reduction=self.reduction, num_items_in_batch=count)
            else:
                kl_values = kl_per_token(logprobs, ref_logprobs, self.kl_estimator, self.kl_direction, self.kl_clamp,
                                         exact_kl)
                kl = self.reduction(kl_values if weights is None else kl_values * weights.to(kl_values.dtype), mask,
                                    count)
            loss = policy + kl_coef * kl
        # tokens where the clipped branch is taken (its gradient is 0): ratio below 1 - eps_low with a negative
        # advantage, or above 1 + eps_high with a positive one (as TRL counts them)
        is_clipped = ((ratio < 1.0 - self.epsilon_low) & (advantage < 0)) | ((ratio > 1.0 + self.epsilon_high)
                                                                               & (advantage > 0))
        clip_fraction = (is_clipped & mask).sum().to(ratio.dtype) / mask.sum()
        return GRPOOutput(loss, policy.detach(), kl.detach(), clip_fraction.detach())
