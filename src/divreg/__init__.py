"""divreg: divergence-regularized training with verified divergences.

Layers, bottom up: :mod:`divreg.divergences`, :mod:`divreg.estimators`, :mod:`divreg.reductions`
(pure functions on tensors), with :mod:`divreg.data` and :mod:`divreg.metrics`; :mod:`divreg.fused`
(chunked evaluation from hidden states); :mod:`divreg.targets` (signals and where they come from),
:mod:`divreg.schedules`; :mod:`divreg.losses`, :mod:`divreg.regularizers` and :mod:`divreg.rl` (what
shapes a rollout: rewards, advantages, the per-paper shapers); :mod:`divreg.models` and :mod:`divreg.training`
(the run machinery); ``divreg.recipes`` (one subpackage per job) and ``divreg.cli``. Models,
training, recipes and the command line need the ``cli`` extra and are imported on demand.
"""

from . import divergences, estimators, fused, losses, metrics, reductions, regularizers, rl, schedules, targets

__version__ = "0.1.0"

__all__ = ["__version__", "divergences", "estimators", "fused", "losses", "metrics", "reductions", "regularizers",
           "rl", "schedules", "targets"]
