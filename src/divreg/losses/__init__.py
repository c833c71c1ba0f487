"""Losses: thin ``nn.Module`` objectives composed of divergences, targets, reductions and
schedules. Each takes its divergence by name, its reduction (a function of
:mod:`divreg.reductions`) and its weight (a number or a :class:`divreg.schedules.Schedule`)."""

from ._common import LossOutput
from ._consistency import TwoViewKL
from ._grpo import (
    IMPORTANCE_LEVELS,
    KL_DIRECTIONS,
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    LOSS_AGGREGATIONS,
    GRPOLoss,
    GRPOOutput,
    kl_per_token,
    loss_aggregation,
)
from ._kd import KDLoss
from ._lm_distill import LMDistillLoss
from ._lp_reg import LpReg, lp_reg_penalty
from ._preference import (PREFERENCE_DIVERGENCES, PREFERENCE_LOSSES, PreferenceLoss, PreferenceLossOutput,
                          PreferenceOutput, f_divergence_link, hypo_kl_surrogate, leave_one_out_baseline,
                          preference_loss)
from ._pskd import PSKDLoss
from ._sampler import SAMPLER_CORRECTIONS, sampler_mismatch, sampler_weights
from ._sinkd import SinKDLoss
from ._uld import ULDLoss, align_answer_positions

__all__ = ["GRPOLoss", "GRPOOutput", "IMPORTANCE_LEVELS", "KDLoss",
           "KL_DIRECTIONS", "KL_ESTIMATORS", "KL_PLACEMENTS", "LMDistillLoss", "LOSS_AGGREGATIONS", "LossOutput", "LpReg",
           "PREFERENCE_DIVERGENCES", "PREFERENCE_LOSSES", "PSKDLoss", "PreferenceLoss", "PreferenceLossOutput", "PreferenceOutput", "SinKDLoss", "TwoViewKL", "ULDLoss", "align_answer_positions",
           "f_divergence_link", "hypo_kl_surrogate",
           "kl_per_token", "leave_one_out_baseline", "loss_aggregation", "lp_reg_penalty",
           "preference_loss", "SAMPLER_CORRECTIONS", "sampler_mismatch", "sampler_weights"]
