"""divreg: divergence-regularized training with verified divergences.

Layers, bottom up: :mod:`divreg.divergences`, :mod:`divreg.estimators`, :mod:`divreg.reductions`
(pure functions on tensors); :mod:`divreg.fused` (chunked evaluation from hidden states);
:mod:`divreg.targets`, :mod:`divreg.schedules`; :mod:`divreg.losses`; :mod:`divreg.metrics`;
recipes and the command line (``divreg.recipes``, ``divreg.cli``), imported on demand.
"""

from . import divergences, estimators, fused, losses, metrics, reductions, schedules, targets

__version__ = "0.1.0"

__all__ = ["__version__", "divergences", "estimators", "fused", "losses", "metrics", "reductions", "schedules", "targets"]
