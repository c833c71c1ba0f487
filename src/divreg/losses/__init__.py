"""Losses: thin ``nn.Module`` objectives composed of divergences, targets and schedules."""

from ._consistency import TwoViewKL
from ._kd import KDLoss
from ._lm_distill import LMDistillLoss
from ._pskd import PSKDLoss
from ._sinkd import SinKDLoss
from ._uld import ULDLoss, align_answer_positions

__all__ = ["KDLoss", "LMDistillLoss", "PSKDLoss", "SinKDLoss", "TwoViewKL", "ULDLoss", "align_answer_positions"]
