"""The run machinery every recipe shares: the run folder, atomic checkpoints, seeds and batch
order (one derivation), gradient accumulation with global normalization, the resumable run
loop, and the recipe driver (the Accelerator, the seed loop, the report, timing, teardown)."""

from ._accumulation import ItemCounts, backward_micro_batches, global_item_counts
from ._driver import Recipe, make_accelerator, mean_std, run_recipe
from ._fsdp import is_fsdp, load_weights, refuse_under_fsdp
from ._checkpoint import load_if_exists, load_model_state, remove_run_checkpoints, save_atomic
from ._loop import ResumableError, RunSpec, RunState, adamw, train_run
from ._faults import fault_point
from ._processes import global_mean, global_means, to_device
from ._order import check_batch_size, derive_seed, epoch_batches, step_batch, uniform_draw
from ._run_folder import append_record, prepare_run_folder

__all__ = ["ResumableError", "adamw", "fault_point", "is_fsdp", "load_weights", "refuse_under_fsdp", "global_mean", "global_means", "to_device", "Recipe", "make_accelerator", "mean_std", "run_recipe", "ItemCounts", "RunSpec", "RunState", "append_record", "backward_micro_batches", "check_batch_size", "derive_seed",
           "epoch_batches", "global_item_counts", "load_if_exists", "load_model_state", "prepare_run_folder", "remove_run_checkpoints",
           "save_atomic", "step_batch", "train_run", "uniform_draw"]
