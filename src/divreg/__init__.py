"""divreg: divergence-regularized training with verified divergences.

Subpackages: :mod:`divreg.divergences` (pure per-position divergences),
:mod:`divreg.estimators` (KL estimators from sampled tokens), :mod:`divreg.reductions`.
"""

from . import divergences, estimators, reductions

__version__ = "0.1.0"

__all__ = ["__version__", "divergences", "estimators", "reductions"]
