"""Losses: thin ``nn.Module`` objectives composed of divergences, targets and schedules."""

from ._consistency import TwoViewKL
from ._kd import KDLoss
from ._pskd import PSKDLoss
from ._sinkd import SinKDLoss

__all__ = ["KDLoss", "PSKDLoss", "SinKDLoss", "TwoViewKL"]
