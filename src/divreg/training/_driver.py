"""The recipe driver, written once (torchtune's recipe interface: setup, then the work, then the
report and cleanup): it builds the Accelerator (the only place one is built), runs each seed
with a progress bar, reports on the main process with the run's time, and tears down. A recipe
provides ``setup()``, ``run_seed(seed)``, ``report(results)`` and ``describe()``."""

from __future__ import annotations

import statistics
import time
from typing import Any, Optional, Protocol, Sequence

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ._fsdp import check_launcher_precision, use_fsdp_if_asked
from ._run_folder import release_run_locks


class Recipe(Protocol):
    """A training job the driver runs: built from its config and the Accelerator."""

    def setup(self) -> None:
        """Data, models, the run folder: everything checked before any training."""

    def run_seed(self, seed: int) -> dict:
        """One seed's runs; what the report needs of them."""

    def report(self, results: dict[int, dict]) -> dict:
        """On the main process: metrics.json, the printed table, the plots; returns the summary."""

    def describe(self) -> str:
        """One line on what ran (the driver adds the processes, the time and the output folder)."""


def make_accelerator(cpu: bool, precision: str = "fp32") -> Accelerator:
    """The one Accelerator of a run: on the CPU when asked or without CUDA (Accelerate runs a
    multi-process job on CPUs, over gloo, only when asked for the CPU explicitly); with
    ``precision="bf16"``, Accelerate's bf16 mixed precision (the prepared model's forward under
    autocast, its outputs returned in fp32; the weights and optimizer state stay fp32)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    from accelerate.state import AcceleratorState

    wanted = "bf16" if precision == "bf16" else "no"
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", wanted)) != wanted:
        # Accelerate keeps one state per process and refuses a second mixed precision; a library user (or a
        # test) running an fp32 job and then a bf16 one in one process gets a fresh state, the processes kept
        AcceleratorState._reset_state(reset_partial_state=False)
    check_launcher_precision(precision)
    accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available(),
                              mixed_precision="bf16" if precision == "bf16" else "no")
    use_fsdp_if_asked(accelerator, precision)
    return accelerator


def run_recipe(recipe_type: Any, config: Any) -> Optional[dict]:
    """``recipe_type(config, accelerator)``: setup, each of ``config.seeds`` (or the recipe's own
    ``seeds``), the report (main process), timing and teardown. Returns the report's summary
    (None on other processes)."""
    started = time.perf_counter()
    accelerator = make_accelerator(config.cpu, getattr(config, "precision", "fp32"))
    recipe = recipe_type(config, accelerator)
    try:
        recipe.setup()
        seeds = getattr(recipe, "seeds", None) or config.seeds
        results = {seed: recipe.run_seed(seed)
                   for seed in tqdm(seeds, desc="seeds", disable=not accelerator.is_local_main_process)}
        summary = None
        if accelerator.is_main_process:
            summary = recipe.report(results)
            print(f"{recipe.describe()}, {accelerator.num_processes} process(es), in "
                  f"{time.perf_counter() - started:.0f} s; outputs in {config.output_dir}")
        accelerator.wait_for_everyone()
    finally:
        release_run_locks()  # the output folder's lock (prepare_run_folder), also when the run stops on an error
    accelerator.end_training()
    return summary


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` of values over seeds: the sample standard deviation (ddof=1), 0 for one."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
