"""KL estimators from sampled tokens: k1, k2, k3 and k3 with k2's gradient."""

from ._kl_estimators import k1, k2, k3, k3_k2grad

__all__ = ["k1", "k2", "k3", "k3_k2grad"]
