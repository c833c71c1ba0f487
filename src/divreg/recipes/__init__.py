"""Recipes: one subpackage per training job (``classifier_distillation``, ``lm_distillation``
with its teacher cache, ``rl``, ``preference``, ``selection``), each a ``Recipe`` run by
:func:`divreg.training.run_recipe` (setup, each seed, the report); the analytics commands in
``analytics``; private helpers shared by the recipes (``_blocks``: config blocks, ``_methods``:
the methods parser, ``_warmup``: the warm-up and evaluation on the built-in task)."""
