"""Losses: thin ``nn.Module`` objectives composed of divergences, targets, reductions and
schedules. Each takes its divergence by name, its reduction (a function of
:mod:`divreg.reductions`) and its weight (a number or a :class:`divreg.schedules.Schedule`)."""

from ._common import LossOutput
from ._consistency import TwoViewKL
from ._kd import KDLoss
from ._lm_distill import LMDistillLoss
from ._pskd import PSKDLoss
from ._sinkd import SinKDLoss
from ._uld import ULDLoss, align_answer_positions

__all__ = ["KDLoss", "LMDistillLoss", "LossOutput", "PSKDLoss", "SinKDLoss", "TwoViewKL", "ULDLoss",
           "align_answer_positions"]
