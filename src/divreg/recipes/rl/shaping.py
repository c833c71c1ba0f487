"""The per-paper options of ``divreg rl`` as shapers (:mod:`divreg.rl`), built once from the
config in the order they apply: reward shaping (CTRL, the KL in the reward), RAPO's target, the
group advantages, then what reads them (APO's STCR and DADS, KDRL's masking, Lp-Reg)."""

from __future__ import annotations

from ...losses import GRPOLoss
from ...rl import (DADS, STCR, CTRLCalibration, GroupAdvantages, KLPenaltyInReward, LpRegSelection, MaskCorrectKL,
                   RAPOReference, Shaper)
from .config import RLConfig


def build_shapers(config: RLConfig, loss: GRPOLoss) -> list[Shaper]:
    shapers: list[Shaper] = []
    if config.ctrl != "none":
        shapers.append(CTRLCalibration(config.ctrl, config.ctrl_t, config.ctrl_samples))
    if config.kl_placement == "reward":
        shapers.append(KLPenaltyInReward(loss))
    if config.rapo:
        shapers.append(RAPOReference(sum(config.rewards.values())))
    shapers.append(GroupAdvantages(config.advantage_scale, config.advantage_eps))
    if config.stcr:
        shapers.append(STCR(config.stcr_base))
    if config.dads:
        shapers.append(DADS(config.dads_scale))
    if config.kl_mask_correct:
        shapers.append(MaskCorrectKL())
    if config.lp_reg:
        shapers.append(LpRegSelection(config.lp_reg_kappa, config.lp_reg_rho))
    return shapers
