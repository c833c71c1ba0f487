"""Models: causal LMs from ``transformers`` (loaded by local path or hub id, or built from a
config) behind a thin wrapper, sampling from them, tokenizers, trained models written as Hugging
Face folders, small classifier nets, and an ensemble of causal LMs as one teacher (logits
averaged)."""

from ._causal_lm import (AdaptersOff, CausalLM, ModelSource, add_lora, build_causal_lm, load_tokenizer, model_tokenizer, next_token_signal,
                         own_tokenizer, tiny_llama, weights_fingerprint)
from ._enumerate import exact_sequence_kl
from ._ensemble import COMBINE as ENSEMBLE_COMBINE, LogitEnsemble, load_ensemble, teacher_fingerprint
from ._classifiers import MLP, SmallCNN, build_classifier, predict_probabilities
from ._export import export_checkpoint, save_model_folder
from ._generation import generate_examples, greedy_completions

__all__ = ["CausalLM", "MLP", "ModelSource", "SmallCNN", "build_causal_lm", "build_classifier", "exact_sequence_kl", "generate_examples", "greedy_completions",
           "load_tokenizer", "model_tokenizer", "next_token_signal", "predict_probabilities", "tiny_llama", "weights_fingerprint",
           "export_checkpoint", "own_tokenizer", "save_model_folder", "AdaptersOff", "add_lora", "LogitEnsemble", "load_ensemble", "ENSEMBLE_COMBINE",
           "teacher_fingerprint"]
