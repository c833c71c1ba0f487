"""Exact alignment analytics (float64, on distributions small enough to enumerate): the
KL-optimal (tilted) policy, best-of-N, their reward-versus-KL frontier, the memoryless Bernoulli
model, InfAlign's calibrated space by quadrature, and distribution matching (DPG) toward an
unnormalized target. Pure functions: no model, no training loop."""

from ._dpg import (KLEstimates, adaptive_proposal_update, dpg_kl_estimates, dpg_surrogate, log_importance_ratios,
                   log_partition_estimate)
from ._exact import (BernoulliGap, CalibratedPolicy, Frontier, alignment_frontier, bernoulli_best_of_n_gap,
                     bernoulli_count_pmf,
                     bernoulli_tilted_parameter, best_of_n, best_transform_parameter, best_of_n_kl_bound, beta_for_kl, beta_for_reward,
                     calibrate, calibrated_beta_for_kl, calibrated_policy, calibrated_transform, kl, log_partition,
                     regularized_objective, tilted_policy, win_rate)

__all__ = ["BernoulliGap", "CalibratedPolicy", "Frontier", "KLEstimates", "adaptive_proposal_update",
           "alignment_frontier", "bernoulli_best_of_n_gap", "bernoulli_count_pmf", "bernoulli_tilted_parameter", "best_of_n",
           "best_of_n_kl_bound", "best_transform_parameter", "beta_for_kl", "beta_for_reward", "calibrate", "calibrated_beta_for_kl",
           "calibrated_policy", "calibrated_transform", "dpg_kl_estimates", "dpg_surrogate", "kl",
           "log_importance_ratios", "log_partition", "log_partition_estimate", "regularized_objective",
           "tilted_policy", "win_rate"]
