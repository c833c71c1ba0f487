"""Eval mode for a while, with every module's own mode restored after."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; after it, each submodule's ``training`` flag as it was.

    ``model.train(was_training)`` would restore one flag for every submodule, which undoes a mixed
    state: RL and preference scoring run in eval mode with the decoder layers alone in training
    mode, so that gradient checkpointing stays on (:meth:`CausalLM.checkpointing_in_eval`); a
    generation in between must leave that as it found it.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
