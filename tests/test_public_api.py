"""Pins the public import surface: adding or removing a public name must be deliberate."""

import types

import divreg
import divreg.alignment
import divreg.data
import divreg.divergences
import divreg.divergences.kernels
import divreg.estimators
import divreg.fused
import divreg.generation
import divreg.losses
import divreg.rl
import divreg.metrics
import divreg.models
import divreg.reductions
import divreg.regularizers
import divreg.schedules
import divreg.serving
import divreg.targets
import divreg.training

EXPECTED = {
    divreg.alignment: {"BernoulliGap", "CalibratedPolicy", "Frontier", "KLEstimates", "adaptive_proposal_update",
                       "alignment_frontier", "bernoulli_best_of_n_gap", "bernoulli_count_pmf", "bernoulli_tilted_parameter", "best_of_n",
                       "best_of_n_kl_bound", "best_transform_parameter", "beta_for_kl", "beta_for_reward", "calibrate", "calibrated_beta_for_kl",
                       "calibrated_policy", "calibrated_transform", "dpg_kl_estimates", "dpg_surrogate", "kl",
                       "log_importance_ratios", "log_partition", "log_partition_estimate", "regularized_objective",
                       "tilted_policy", "win_rate"},
    divreg: {"__version__", "divergences", "estimators", "fused", "losses", "metrics", "reductions", "regularizers",
             "rl", "schedules", "targets"},
    divreg.regularizers: {"HalfMask", "apply_half_fine_tuning", "half_fine_tuning_mask", "BORDERS", "DISTANCES", "NACLLoss", "SVLSLoss", "nacl_loss", "nacl_penalty",
                          "neighbour_proportions", "soft_cross_entropy", "svls_kernel", "svls_loss", "svls_targets",
                          "LocalEntropyRegularizer", "PriorEMA", "known_confident_mask", "local_entropy",
                          "TopKSAE", "VariationalSAE", "auxk_loss", "sae_loss", "topk_by_magnitude",
                          "AffineAdapter", "lambda_orthogonality", "orthogonality_gap", "IgniteDual",
                          "surrogate_gradient_norm_grads", "InputConvexNetwork", "proximal_matching_loss",
                          "focal_info_nce", "mix_hard_negatives", "MIAlphaDistill", "ProjectedHiddenLoss",
                          "interpolated_mi_bound", "loo_log_mean_exp", "CoreTuningLoss",
                          "focal_supervised_contrastive", "hard_pair_mix", "random_pair_mix", "soft_label_classes",
                          "MAID", "MAIDState"},
    divreg.generation: {"ESTIMATORS", "AWRSSample", "awrs", "gumbel_order", "Constraint", "JSONSchema", "Predicate",
                        "Regex", "json_schema_regex", "token_texts", "distribution_kl", "exact_importance_resampling",
                        "exact_locally_constrained", "exact_posterior", "given_success", "outcome_total_variation",
                        "BigramLM", "TransformersLM", "RESAMPLING", "SAMPLERS", "RejectionResult", "SMCResult",
                        "masked_sample", "rejection_sampling", "resample_indices", "smc"},
    divreg.fused: {"FusedLinearDivergence", "FusedOutput", "TokenLogprobs", "TokenStatistics", "fused_linear_divergence",
                   "fused_linear_sparse_divergence", "fused_linear_token_logprobs", "token_logprobs"},
    divreg.losses: {"KDLoss", "LMDistillLoss", "LossOutput", "PSKDLoss", "SinKDLoss", "TwoViewKL", "ULDLoss",
                    "align_answer_positions", "GRPOLoss", "GRPOOutput", "IMPORTANCE_LEVELS",
                    "KL_DIRECTIONS", "KL_ESTIMATORS", "KL_PLACEMENTS", "LOSS_AGGREGATIONS",
                    "kl_per_token", "loss_aggregation", "LpReg", "lp_reg_penalty",
                    "PREFERENCE_DIVERGENCES", "PREFERENCE_LOSSES", "PreferenceOutput", "f_divergence_link",
                    "preference_loss", "PreferenceLoss", "PreferenceLossOutput", "hypo_kl_surrogate",
                    "leave_one_out_baseline", "SAMPLER_CORRECTIONS", "sampler_mismatch", "sampler_weights"},
    divreg.rl: {"CTRLCalibration", "DADS", "GroupAdvantages", "KLPenaltyInReward", "LpRegSelection", "MaskCorrectKL",
                "RAPOReference", "Rollout", "STCR", "Shaper", "ShapingContext", "kl_target_signal", "rollout_from_batch",
                "ADVANTAGE_SCALES", "CTRL_TRANSFORMS", "TIE_RULES", "calibrated_rewards", "combine_rewards",
                "ctrl_transform", "dads_kl_weights", "group_advantages", "group_difficulty", "lp_reg_token_mask",
                "min_p_proxy_logprobs", "reweighted_reference_logits", "stcr_advantages",
                "BUILTIN_REWARDS", "check_reward_signature", "exact_match", "integer_format", "reward_function",
                "score_completions"},
    divreg.metrics: {"accuracy", "aurc", "brier_score", "calibration_bins", "classification_metrics", "classwise_ece",
                     "e_aurc", "pixel_ece",
                     "expected_calibration_error", "metric_bars", "nll", "optimal_aurc", "reliability_diagrams",
                     "training_curves"},
    divreg.schedules: {"AdaptiveKLController", "AdaptiveReplayProbability", "Constant", "LinearDecay", "LinearRamp", "Schedule", "as_schedule"},
    divreg.targets: {"truncation_report", "FUSED_AUTO_VOCAB", "FUSED_SETTINGS", "gives_hidden_states", "sampled_token_logprobs", "sampled_token_statistics",
                     "signal_divergence", "DenseLogits", "HiddenStates", "LiveTeacher", "PastPredictions", "ReferencePolicy",
                     "SampledLogprobs", "Signal", "SparseTopK", "TeacherCache", "TeacherCacheWriter", "VOCAB_POLICIES",
                     "as_logits", "detached", "shared_vocab_size", "tokenizer_fingerprint", "SubclassProjection",
                     "class_log_probs", "fit_subclass_projection"},
    divreg.data: {"ARITHMETIC_ALPHABET", "ARITHMETIC_OPERATIONS", "TaskProblem", "arithmetic_problems", "char_tokenizer", "exact_match_reward",
                  "format_reward", "task_records", "ClassificationData", "IGNORE_INDEX", "TextExample", "augment", "builtin_corpus", "chunk_texts",
                  "collate", "examples_fingerprint", "load_classification_data", "load_text_examples", "load_text_records", "tokenize_records",
                  "train_bpe_tokenizer", "PreferencePair", "load_preference_records", "read_records", "tokenize_pairs",
                  "PromptExample", "load_prompt_records", "task_prompt_records", "tokenize_prompts",
                  "CURRICULA", "IRT_MODELS", "IRTFit", "curriculum_weights", "fit_irt", "irt_objective"},
    divreg.models: {"LogitEnsemble", "load_ensemble", "teacher_fingerprint", "ENSEMBLE_COMBINE", "CausalLM", "MLP", "ModelSource", "SmallCNN", "build_causal_lm", "build_classifier",
                    "exact_sequence_kl", "generate_examples", "greedy_completions", "load_tokenizer", "model_tokenizer", "next_token_signal", "predict_probabilities",
                    "tiny_llama", "weights_fingerprint", "export_checkpoint", "own_tokenizer", "save_model_folder",
                    "AdaptersOff", "add_lora"},
    divreg.serving: {"ServedSampler", "ServedTeacher", "ServerClient", "ServerError", "VLLMServer", "check_server_tokenizer",
                     "find_vllm_python", "serve"},
    divreg.training: {"ResumableError", "adamw", "fault_point", "is_fsdp", "load_weights", "refuse_under_fsdp", "global_mean", "global_means", "to_device", "Recipe", "make_accelerator", "mean_std", "run_recipe", "ItemCounts", "RunSpec", "RunState", "append_record", "backward_micro_batches", "check_batch_size",
                      "derive_seed", "epoch_batches", "global_item_counts", "load_if_exists", "load_model_state", "prepare_run_folder",
                      "remove_run_checkpoints", "save_atomic", "step_batch", "train_run", "uniform_draw"},
    divreg.divergences.kernels: {"Scratch", "check_sparse_target", "check_temperature", "log_softmax_checked", "math_dtype", "sparse_kl_with_grad"},
    divreg.divergences: {
        "DIVERGENCES", "Divergence", "TAIL_POLICIES", "check_divergence_options", "check_tail_policy", "get_divergence", "alpha_divergence", "cross_entropy", "forward_kl", "gaussian_kl", "generalized_jsd", "reverse_kl", "sinkhorn_distance",
        "sinkhorn_plan", "skew_kl", "sorted_probability_l1", "sparse_kl",
        "skew_reverse_kl", "topk_kl", "total_variation",
    },
    divreg.estimators: {"k1", "k2", "k3", "k3_k2grad"},
    divreg.reductions: {
        "REDUCTIONS", "get_reduction", "mask_from_labels", "masked_mean", "per_sequence_mean", "position_weights",
        "reduce", "sum_over_items",
    },
}


def test_all_is_pinned_and_importable():
    for module, names in EXPECTED.items():
        assert set(module.__all__) == names, module.__name__
        for name in names:
            assert hasattr(module, name), (module.__name__, name)


def test_no_unlisted_public_names():
    """Everything public that is not a private submodule (``_kl`` etc.) is in ``__all__``."""
    for module, names in EXPECTED.items():
        public = {
            name for name, value in vars(module).items()
            if not name.startswith("_") and not (isinstance(value, types.ModuleType) and name not in names)
        }
        assert public <= names | {"__version__"}, (module.__name__, public - names)


def test_the_library_needs_only_torch_and_numpy():
    """``import divreg`` and its math work with the optional dependencies unavailable."""
    import subprocess
    import sys

    blocked = ["omegaconf", "matplotlib", "transformers", "tokenizers", "datasets", "accelerate", "sklearn", "scipy",
               "tqdm"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import torch, divreg\n"
        "from divreg.fused import fused_linear_divergence\n"
        "x = divreg.divergences.generalized_jsd(torch.randn(3, 5), torch.randn(3, 5))\n"
        "print(float(divreg.reductions.masked_mean(x)) >= 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
