"""Data for the recipes: built-in tasks, files, ``datasets`` folders, augmentations; text
examples for language models (prompt positions labelled ``IGNORE_INDEX``)."""

from ._classification import ClassificationData, augment, load_classification_data
from ._text import (
    IGNORE_INDEX,
    TextExample,
    builtin_corpus,
    chunk_texts,
    collate,
    examples_fingerprint,
    load_text_examples,
    load_text_records,
    tokenize_records,
    train_bpe_tokenizer,
)

__all__ = ["ClassificationData", "IGNORE_INDEX", "TextExample", "augment", "builtin_corpus", "chunk_texts", "collate",
           "examples_fingerprint", "load_classification_data", "load_text_examples", "load_text_records", "tokenize_records",
           "train_bpe_tokenizer"]
