"""Analytics commands, not training recipes: ``divreg frontier`` (the exact reward-KL frontier of
best-of-N and the KL-regularized optimum, :mod:`divreg.alignment`) and ``divreg mode-fitting``
(a two-parameter student fitted to a two-mode target under each divergence). They run in one
process, without Accelerate or the recipe driver."""
