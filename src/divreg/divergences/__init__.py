"""Divergences between a model's distribution q (``logits``) and a target p (``target_logits``).

Every function is pure, takes ``(logits, target_logits, *, temperature=1.0, dim=-1, ...)``,
and returns one unreduced value per position (shape ``logits.shape`` without ``dim``), computed
in fp32 (fp64 for fp64 inputs) in log space. Reduce with :mod:`divreg.reductions`.
``sinkhorn_plan`` / ``sinkhorn_distance`` are batch-level: entropic optimal transport between
two sets of samples given their cost matrix. ``gaussian_kl`` is the per-element KL between
diagonal Gaussians (a VAE's or variational SAE's term), from means and log-variances. ``get_divergence(name)`` / ``DIVERGENCES`` look a
divergence up by name (what configs and losses use); :mod:`divreg.divergences.kernels` holds
the value-and-gradient building blocks of the fused path.
"""

from ._alpha import alpha_divergence
from ._cross_entropy import cross_entropy
from ._gaussian import gaussian_kl
from ._jsd import generalized_jsd
from ._kl import forward_kl, reverse_kl
from ._registry import DIVERGENCES, Divergence, check_divergence_options, get_divergence
from ._sinkhorn import sinkhorn_distance, sinkhorn_plan
from ._skew import skew_kl, skew_reverse_kl
from ._sorted import sorted_probability_l1
from ._sparse import TAIL_POLICIES, check_tail_policy, sparse_kl
from ._topk import topk_kl
from ._total_variation import total_variation

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "TAIL_POLICIES",
    "check_divergence_options",
    "check_tail_policy",
    "get_divergence",
    "alpha_divergence",
    "cross_entropy",
    "forward_kl",
    "gaussian_kl",
    "generalized_jsd",
    "reverse_kl",
    "sinkhorn_distance",
    "sinkhorn_plan",
    "skew_kl",
    "skew_reverse_kl",
    "sorted_probability_l1",
    "sparse_kl",
    "topk_kl",
    "total_variation",
]
