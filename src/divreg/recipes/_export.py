"""Each trained model of an LM command as a Hugging Face folder, ``output_dir/models/<run>/``:
its skeleton (config, generation config, tokenizer, and which checkpoint it comes from) before the
run trains, the weights once it is done, so a stopped run's models can still be exported from their
checkpoints (``divreg export RUN_DIR``)."""

from __future__ import annotations

import contextlib
import os

from ..models import export_checkpoint, save_model_folder
from ..training import is_fsdp


def model_folder(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, "models", name)


@contextlib.contextmanager
def exported(accelerator, model, tokenizer, output_dir: str, name: str):
    """Around one run of ``model`` (trained in place, checkpointed as ``checkpoints/<name>.pt``):
    the folder's skeleton first, the trained weights after (main process; the others wait)."""
    folder, checkpoint = model_folder(output_dir, name), os.path.join("checkpoints", f"{name}.pt")
    if accelerator.is_main_process:
        save_model_folder(model, tokenizer, folder, checkpoint=checkpoint, weights=False)
    yield folder
    if accelerator.is_main_process:
        if is_fsdp(accelerator):  # the model holds shards: the weights from its (full) final checkpoint
            export_checkpoint(folder)
        else:
            save_model_folder(accelerator.unwrap_model(model), tokenizer, folder, checkpoint=checkpoint)
    accelerator.wait_for_everyone()
