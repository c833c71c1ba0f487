"""FSDP2 through Accelerate, on GPUs and on CPUs.

``accelerate launch --config_file configs/accelerate/fsdp.yaml`` asks for FSDP; Accelerate then
shards the trained model with ``fully_shard`` (FSDP2): every decoder layer (its
``_no_split_modules``), the input embedding and the tail (final norm + output layer) are their
own units, the rest the root's. Accelerate 1.16 enables that plugin only for accelerator devices:
a multi-process CPU job (gloo) becomes ``MULTI_CPU`` and the plugin is dropped. FSDP2 itself runs
on CPUs over gloo, so :func:`use_fsdp_if_asked` turns the same plugin (read from the launcher's
config, as Accelerate reads it) back on; everything after that is Accelerate's own FSDP2 path
(``prepare``, the sharding, gradient clipping).

What divreg adds on top: a launcher config it cannot honour is refused in one line before any
training (FSDP1, sharded state dicts, Accelerate's activation checkpointing, a launcher mixed
precision other than the recipe's ``precision``), and checkpoints are *full* state dicts (the
same file as a one-process run's, loadable by ``divreg export`` and by a run on any number of
processes): gathered with ``torch.distributed.checkpoint.state_dict`` and loaded back into the
shards on every process.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

FSDP_CONFIG = "configs/accelerate/fsdp.yaml"


def fsdp_requested() -> bool:
    """The launcher asked for FSDP (``distributed_type: FSDP`` / ``--use_fsdp``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_fsdp(accelerator: Accelerator) -> bool:
    """The run's model is sharded with FSDP."""
    return accelerator.distributed_type == DistributedType.FSDP


def check_launcher_precision(precision: str) -> None:
    """A launcher's ``--mixed_precision`` (or ``mixed_precision:`` of its config) other than
    ``"no"`` must be the recipe's ``precision``: the recipe's key decides, and a different value
    would be silently overridden."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    wanted = "bf16" if precision == "bf16" else "no"
    if launcher not in (None, "", "no", wanted):
        raise ValueError(f"the accelerate launcher asks for mixed_precision={launcher} but the recipe's precision="
                         f"{precision}: the recipe's precision decides; set mixed_precision: 'no' in the accelerate "
                         f"config (or --mixed_precision no) and precision=bf16 in the command for bf16")


def use_fsdp_if_asked(accelerator: Accelerator, precision: str) -> None:
    """When the launcher asked for FSDP: check its plugin (one line naming what to change) and,
    on CPUs, enable it (see the module docstring)."""
    if not fsdp_requested():
        return
    if accelerator.num_processes < 2:
        return  # one process: nothing to shard (accelerate launch with num_processes: 1)
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.MULTI_CPU):
        raise ValueError(f"FSDP was asked for but Accelerate chose {accelerator.distributed_type.value}; "
                         f"launch with --config_file {FSDP_CONFIG}")
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = accelerator.state.fsdp_plugin if is_fsdp(accelerator) else FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(f"fsdp_version: {plugin.fsdp_version} in the accelerate config: divreg runs FSDP2 only; set "
                         f"fsdp_version: 2 (as in {FSDP_CONFIG})")
    kind = getattr(plugin.state_dict_type, "name", str(plugin.state_dict_type))
    if kind != "FULL_STATE_DICT":
        raise ValueError(f"fsdp_state_dict_type: {kind} in the accelerate config: divreg's checkpoints are full state "
                         "dicts (one file, loadable on any number of processes and by divreg export); set "
                         "fsdp_state_dict_type: FULL_STATE_DICT")
    if plugin.activation_checkpointing:
        raise ValueError("fsdp_activation_checkpointing: true in the accelerate config: use the recipe's "
                         "gradient_checkpointing=true instead (it checkpoints every decoder layer the same way, and "
                         "rl/preference keep it active in their eval-mode scoring); set fsdp_activation_checkpointing: "
                         "false")
    if precision == "bf16":  # bf16 compute, fp32 master weights and optimizer state, gradients reduced in fp32
        from torch.distributed.fsdp import MixedPrecisionPolicy  # (Accelerate's own policy reduces in bf16)

        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if not is_fsdp(accelerator):
        from accelerate.state import PartialState

        # both shared states: every later AcceleratorState() re-reads the process state's type
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin


def refuse_under_fsdp(accelerator: Accelerator, what: str, instead: str) -> None:
    """One line when a recipe option cannot run on a sharded model."""
    if is_fsdp(accelerator):
        raise ValueError(f"{what} cannot run under FSDP (its sharded model runs forward passes in lockstep on every "
                         f"process); {instead}")


def prepare_sharded(accelerator: Accelerator, model: torch.nn.Module, optimizer):
    """``accelerator.prepare(model, optimizer)``, and under FSDP the model's ``generate`` made an
    FSDP forward method (the root's parameters gathered for it, as for ``forward``)."""
    model, optimizer = accelerator.prepare(model, optimizer)
    if is_fsdp(accelerator) and hasattr(model, "generate"):
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, "generate")
    return model, optimizer


def sharded(model: torch.nn.Module) -> bool:
    """``model`` is sharded by FSDP2 (``fully_shard`` changed it in place)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(accelerator: Accelerator, model: torch.nn.Module, optimizer) -> tuple[dict, Any]:
    """The model's and the optimizer's state dicts as one process would have them: under FSDP
    gathered from the shards (a collective: every process calls it), the model's on every
    process's CPU (the recipes go on from it), the optimizer's (keyed by parameter name) on the
    main process's only (it is only written); otherwise ``state_dict()`` of each."""
    if not is_fsdp(accelerator):
        return accelerator.unwrap_model(model).state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    model_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    optimizer_state = get_optimizer_state_dict(model, inner, options=StateDictOptions(full_state_dict=True,
                                                                                       cpu_offload=True))
    return {name: tensor.cpu() for name, tensor in model_state.items()}, {"fsdp": optimizer_state}


def load_weights(model: torch.nn.Module, state: dict) -> None:
    """``model.load_state_dict(state)`` for a full state dict, into the shards when ``model`` is
    sharded by FSDP (every process holds ``state``)."""
    if not sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # (a copy: torch replaces the given dict's entries by the shards)
    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))


def load_full_state(accelerator: Accelerator, model: torch.nn.Module, optimizer, model_state: dict,
                    optimizer_state: Any) -> None:
    """Load a checkpoint's full state dicts (see :func:`full_state`) into a prepared model and
    its optimizer; under FSDP every process loads the file's full dicts into its own shards."""
    sharded_state = isinstance(optimizer_state, dict) and set(optimizer_state) == {"fsdp"}
    if sharded_state != is_fsdp(accelerator):
        written, now = ("with", "without") if sharded_state else ("without", "with")
        raise ValueError(f"this checkpoint was written {written} FSDP and the run resumes {now} it: resume with the "
                         "launcher configuration that wrote it (or start afresh without resume=true)")
    if not is_fsdp(accelerator):
        accelerator.unwrap_model(model).load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, dict(model_state), options=options)  # (copies: torch writes the shards into them)
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), copy.deepcopy(optimizer_state["fsdp"]),
                             options=options)
