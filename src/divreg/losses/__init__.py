"""Losses: thin ``nn.Module`` objectives composed of divergences, targets, reductions and
schedules. Each takes its divergence by name, its reduction (a function of
:mod:`divreg.reductions`) and its weight (a number or a :class:`divreg.schedules.Schedule`)."""

from ._common import LossOutput
from ._consistency import TwoViewKL
from ._grpo import (
    ADVANTAGE_SCALES,
    IMPORTANCE_LEVELS,
    KL_DIRECTIONS,
    KL_ESTIMATORS,
    KL_PLACEMENTS,
    LOSS_AGGREGATIONS,
    GRPOLoss,
    GRPOOutput,
    combine_rewards,
    group_advantages,
    kl_per_token,
    loss_aggregation,
)
from ._kd import KDLoss
from ._lm_distill import LMDistillLoss
from ._pskd import PSKDLoss
from ._sinkd import SinKDLoss
from ._uld import ULDLoss, align_answer_positions

__all__ = ["ADVANTAGE_SCALES", "GRPOLoss", "GRPOOutput", "IMPORTANCE_LEVELS", "KDLoss", "KL_DIRECTIONS", "KL_ESTIMATORS",
           "KL_PLACEMENTS", "LMDistillLoss", "LOSS_AGGREGATIONS", "LossOutput", "PSKDLoss", "SinKDLoss", "TwoViewKL",
           "ULDLoss", "align_answer_positions", "combine_rewards", "group_advantages", "kl_per_token",
           "loss_aggregation"]
