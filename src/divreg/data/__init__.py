"""Data for the recipes: built-in tasks, files, ``datasets`` folders, augmentations; text
examples for language models (prompt positions labelled ``IGNORE_INDEX``); item difficulty from
observed correctness (IRT) and difficulty-ordered sampling weights."""

from ._difficulty import CURRICULA, IRT_MODELS, IRTFit, curriculum_weights, fit_irt, irt_objective
from ._classification import ClassificationData, augment, load_classification_data
from ._pairs import PreferencePair, load_preference_records, tokenize_pairs
from ._prompts import PromptExample, load_prompt_records, task_prompt_records, tokenize_prompts
from ._tasks import (
    ARITHMETIC_ALPHABET,
    ARITHMETIC_OPERATIONS,
    TaskProblem,
    arithmetic_problems,
    char_tokenizer,
    exact_match_reward,
    format_reward,
    task_records,
)
from ._text import (
    IGNORE_INDEX,
    TextExample,
    builtin_corpus,
    chunk_texts,
    collate,
    examples_fingerprint,
    load_text_examples,
    load_text_records,
    read_records,
    tokenize_records,
    train_bpe_tokenizer,
)

__all__ = ["ARITHMETIC_ALPHABET", "ARITHMETIC_OPERATIONS", "TaskProblem", "arithmetic_problems", "char_tokenizer", "exact_match_reward",
           "format_reward", "task_records", "ClassificationData", "IGNORE_INDEX", "TextExample", "augment", "builtin_corpus", "chunk_texts", "collate",
           "examples_fingerprint", "load_classification_data", "load_text_examples", "load_text_records", "tokenize_records",
           "PreferencePair", "load_preference_records", "read_records", "tokenize_pairs",
           "train_bpe_tokenizer", "PromptExample", "load_prompt_records", "task_prompt_records", "tokenize_prompts",
           "CURRICULA", "IRT_MODELS", "IRTFit", "curriculum_weights", "fit_irt", "irt_objective"]
