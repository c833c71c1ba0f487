"""Regularizers beyond distillation: ``loss = task_loss + weight * regularizer`` where the
regularizer pulls toward something other than a teacher's distribution. One small module per
family; pure functions hold the math (per-element values, unreduced unless the paper's loss is
a scalar), thin modules compose them with a weight (a number or a :mod:`divreg.schedules`
schedule).

Families: calibration for dense prediction (SVLS, NACL); generalized category discovery
(LegoGCD's local entropy regularization); sparsity (TopK and variational sparse autoencoders); representations (Distiller's MI-alpha, Core-tuning's focal contrast on mixed features, lambda-orthogonality, KaLM-Embedding's focal InfoNCE with mixed hard negatives); sharpness of a surrogate (IGNITE); priors (learned proximal networks); regularization weights learned by bilevel optimization (MAID); the previous stage's weights,
held for a random half of the parameters (Half Fine-Tuning).
"""

from ._calibration import (BORDERS, DISTANCES, NACLLoss, SVLSLoss, nacl_loss, nacl_penalty, neighbour_proportions,
                           soft_cross_entropy, svls_kernel, svls_loss, svls_targets)
from ._discovery import LocalEntropyRegularizer, PriorEMA, known_confident_mask, local_entropy
from ._sparse import TopKSAE, VariationalSAE, auxk_loss, sae_loss, topk_by_magnitude
from ._orthogonality import AffineAdapter, lambda_orthogonality, orthogonality_gap
from ._sharpness import IgniteDual, surrogate_gradient_norm_grads
from ._prox import InputConvexNetwork, proximal_matching_loss
from ._contrastive import focal_info_nce, mix_hard_negatives
from ._mutual_information import MIAlphaDistill, ProjectedHiddenLoss, interpolated_mi_bound, loo_log_mean_exp
from ._core_tuning import (CoreTuningLoss, focal_supervised_contrastive, hard_pair_mix, random_pair_mix,
                          soft_label_classes)
from ._bilevel import MAID, MAIDState
from ._half_fine_tuning import HalfMask, apply_half_fine_tuning, half_fine_tuning_mask

__all__ = ["HalfMask", "apply_half_fine_tuning", "half_fine_tuning_mask", "MAID", "MAIDState", "CoreTuningLoss", "focal_supervised_contrastive", "hard_pair_mix", "random_pair_mix", "soft_label_classes", "MIAlphaDistill", "ProjectedHiddenLoss", "interpolated_mi_bound", "loo_log_mean_exp", "focal_info_nce", "mix_hard_negatives", "InputConvexNetwork", "proximal_matching_loss", "IgniteDual", "surrogate_gradient_norm_grads", "AffineAdapter", "lambda_orthogonality", "orthogonality_gap", "TopKSAE", "VariationalSAE", "auxk_loss", "sae_loss", "topk_by_magnitude", "LocalEntropyRegularizer", "PriorEMA", "known_confident_mask", "local_entropy", "BORDERS", "DISTANCES", "NACLLoss", "SVLSLoss", "nacl_loss", "nacl_penalty", "neighbour_proportions", "soft_cross_entropy",
           "svls_kernel", "svls_loss", "svls_targets"]
