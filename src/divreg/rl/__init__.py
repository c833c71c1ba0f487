"""The reward functions (TRL's signature: built-ins and a user's by dotted path) and what shapes a
rollout rather than scoring it (torchtune keeps ``rlhf/rewards.py`` apart from
``rlhf/loss/``): reward combination and calibration (InfAlign's CTRL), GRPO's group advantages,
and the per-paper shapers (APO's DADS and STCR, RAPO's reweighted reference, Lp-Reg's token
selection and min-p proxy). The losses that score a rollout are in :mod:`divreg.losses`
(``GRPOLoss``, Lp-Reg's penalty)."""

from ._advantages import ADVANTAGE_SCALES, group_advantages
from ._apo import dads_kl_weights, group_difficulty, stcr_advantages
from ._ctrl import CTRL_TRANSFORMS, TIE_RULES, calibrated_rewards, ctrl_transform
from ._lp_reg import lp_reg_token_mask, min_p_proxy_logprobs
from ._rapo import reweighted_reference_logits
from ._reward_functions import (BUILTIN_REWARDS, check_reward_signature, exact_match, integer_format, reward_function,
                                score_completions)
from ._rewards import combine_rewards
from ._rollout import Rollout, rollout_from_batch
from ._shapers import (DADS, STCR, CTRLCalibration, GroupAdvantages, KLPenaltyInReward, LpRegSelection, MaskCorrectKL,
                       RAPOReference, Shaper, ShapingContext, kl_target_signal)

__all__ = ["CTRLCalibration", "DADS", "GroupAdvantages", "KLPenaltyInReward", "LpRegSelection", "MaskCorrectKL",
           "RAPOReference", "Rollout", "STCR", "Shaper", "ShapingContext", "kl_target_signal", "rollout_from_batch",
           "ADVANTAGE_SCALES", "CTRL_TRANSFORMS", "TIE_RULES", "calibrated_rewards", "combine_rewards",
           "ctrl_transform", "dads_kl_weights", "group_advantages", "group_difficulty", "lp_reg_token_mask",
           "min_p_proxy_logprobs", "reweighted_reference_logits", "stcr_advantages",
           "BUILTIN_REWARDS", "check_reward_signature", "exact_match", "integer_format", "reward_function",
           "score_completions"]
