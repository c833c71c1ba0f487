"""Divergences between a model's distribution q (``logits``) and a target p (``target_logits``).

Every function is pure, takes ``(logits, target_logits, *, temperature=1.0, dim=-1, ...)``,
and returns one unreduced value per position (shape ``logits.shape`` without ``dim``), computed
in fp32 (fp64 for fp64 inputs) in log space. Reduce with :mod:`divreg.reductions`.
"""

from ._alpha import alpha_divergence
from ._jsd import generalized_jsd
from ._kl import forward_kl, reverse_kl
from ._skew import skew_kl, skew_reverse_kl
from ._topk import topk_kl
from ._total_variation import total_variation

__all__ = [
    "alpha_divergence",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "topk_kl",
    "total_variation",
]
