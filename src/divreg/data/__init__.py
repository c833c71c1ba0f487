"""Data for the recipes: built-in tasks, files, ``datasets`` folders, augmentations."""

from ._classification import ClassificationData, augment, load_classification_data

__all__ = ["ClassificationData", "augment", "load_classification_data"]
