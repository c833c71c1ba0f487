"""Recipes: one readable training job per file, shaped setup -> train -> report."""

from .mode_fitting import ModeFittingConfig
from .mode_fitting import run as run_mode_fitting

__all__ = ["ModeFittingConfig", "run_mode_fitting"]
