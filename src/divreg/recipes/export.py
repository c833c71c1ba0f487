"""``divreg export RUN_DIR``: every model folder of a run (``RUN_DIR/models/<run>/``) completed
with the weights of its latest checkpoint, loadable by ``AutoModelForCausalLM.from_pretrained`` and
vLLM. The LM commands write these folders themselves when a run ends; this is for a run that was
stopped, or to take an earlier checkpoint (``checkpoint=PATH`` with ``name=<run>``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .._table import format_table
from ..models import export_checkpoint

__all__ = ["ExportConfig", "run"]


@dataclass
class ExportConfig:
    run_dir: str = "outputs/distill_lm"  # the output_dir of a distill-lm, rl or preference run (or give it first)
    name: Optional[str] = None  # only this model folder (models/<name>); null: every one
    checkpoint: Optional[str] = None  # with name: this checkpoint instead of the folder's own


def run(config: ExportConfig) -> list[str]:
    models = os.path.join(config.run_dir, "models")
    if not os.path.isdir(models):
        raise ValueError(f"{config.run_dir} has no models/ folder: give the output_dir of a distill-lm, rl or "
                         "preference run (runs before this version wrote none)")
    names = sorted(n for n in os.listdir(models) if os.path.isfile(os.path.join(models, n, "config.json")))
    if config.name is not None:
        if config.name not in names:
            raise ValueError(f"no model folder {config.name!r} in {models}; there are {names}")
        names = [config.name]
    elif config.checkpoint is not None:
        raise ValueError("checkpoint= names one checkpoint: give name= the model folder it belongs to")
    if not names:
        raise ValueError(f"{models} holds no model folders")
    done = []
    for name in names:
        folder = export_checkpoint(os.path.join(models, name), config.checkpoint)
        done.append({"model": name, "folder": folder})
    print(format_table(done, ["model", "folder"]))
    return [d["folder"] for d in done]
