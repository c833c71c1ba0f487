"""Command line: ``divreg <command> [config.yaml] [key=value ...]``.

Each command is a recipe with a dataclass config; the optional YAML file and the
``key=value`` overrides are merged onto its defaults (see :mod:`divreg.config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import inspect
import json
import os
import re
import sys
from typing import Callable, NamedTuple, Optional, Sequence


class Command(NamedTuple):
    help: str
    module: str  # the recipe module, imported only when the command runs (heavy imports stay lazy)
    config: str  # its config dataclass
    run: str = "run"  # its run(config) function

    def load(self) -> tuple[type, Callable]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.run)


# The one table of commands: name -> (help, recipe module, config class, run function).
COMMANDS = {
    "demo": Command("the main job on built-in data: classifier distillation on the digits",
                    "divreg.recipes.classifier_distillation", "DistillClassifierConfig"),
    "distill-classifier": Command("distill a classifier teacher into students with each method, several seeds",
                                  "divreg.recipes.classifier_distillation", "DistillClassifierConfig"),
    "distill-lm": Command("distill a teacher causal LM into students, one per method",
                          "divreg.recipes.lm_distillation", "DistillLMConfig"),
    "cache-teacher": Command("store a teacher's top-k log-probs per position for later distillation",
                             "divreg.recipes.lm_distillation.cache", "CacheTeacherConfig"),
    "rl": Command("GRPO with a KL to a frozen reference on a verifiable task (warm-up, then RL), several seeds",
                  "divreg.recipes.rl", "RLConfig"),
    "preference": Command("DPO-family preference optimization and HyPO's online KL from one warm-up model, several seeds",
                          "divreg.recipes.preference", "PreferenceConfig"),
    "frontier": Command("the exact reward-vs-KL frontier of best-of-N and the KL-regularized optimum",
                        "divreg.recipes.analytics.frontier", "FrontierConfig"),
    "select": Command("data selection by importance resampling (DSIR): the raw examples closest to a target corpus",
                      "divreg.recipes.selection", "SelectConfig"),
    "mode-fitting": Command("fit a single-mode student to a two-mode target under each divergence",
                            "divreg.recipes.analytics.mode_fitting", "ModeFittingConfig"),
    "export": Command("write a run's trained models as Hugging Face folders from their latest checkpoints",
                      "divreg.recipes.export", "ExportConfig"),
    "serve": Command("serve a model folder with vLLM (its own venv: make vllm) for teacher.server= / generation.server=",
                     "divreg.serving.command", "ServeConfig"),
}

# commands whose first argument may be a folder: divreg export RUN_DIR, divreg serve MODEL_DIR
FOLDER_ARGUMENT = {"export": "run_dir", "serve": "model"}


def _split_arguments(arguments: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``[config.yaml] [key=value ...]`` -> (config path or None, overrides)."""
    config_path, overrides = None, []
    for position, argument in enumerate(arguments):
        if "=" not in argument and position == 0:
            config_path = argument
        elif "=" in argument:
            overrides.append(argument)
        else:
            raise ValueError(f"unexpected argument {argument!r}: give at most one config file, first, then key=value")
    return config_path, overrides


def _field_comments(schema: type) -> dict[str, str]:
    """Each dataclass field's comment: the ``# ...`` on its line, or the comment lines just above it;
    a field a subclass redeclares without a comment keeps its base class's (the shared blocks)."""
    comments: dict[str, str] = {}
    for base in reversed([c for c in schema.__mro__ if dataclasses.is_dataclass(c)]):
        comments |= {name: text for name, text in _own_comments(base).items() if text or name not in comments}
    return comments


def _own_comments(schema: type) -> dict[str, str]:
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(schema).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+)\s*:[^=]*(=.*)?$", stripped)
        if match and not stripped.startswith(("def ", "return", "@")):
            inline = stripped.split("  # ", 1)[1] if "  # " in stripped else ""
            comments[match.group(1)] = " ".join(filter(None, [*pending, inline]))
        pending = []
    return comments


def config_keys(schema: type, defaults: Optional[dict] = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default as JSON, comment) for every field of ``schema``, nested ones included
    (with the defaults the parent gives them)."""
    from omegaconf import OmegaConf

    comments = _field_comments(schema)
    defaults = OmegaConf.to_container(OmegaConf.structured(schema)) if defaults is None else defaults
    rows = []
    for field in dataclasses.fields(schema):
        default = defaults[field.name]
        nested = field.type if isinstance(field.type, type) and dataclasses.is_dataclass(field.type) else None
        if nested is None and field.default_factory is not dataclasses.MISSING:
            probe = field.default_factory()
            nested = type(probe) if dataclasses.is_dataclass(probe) else None
        if nested is not None:
            rows += config_keys(nested, default, f"{prefix}{field.name}.")
        else:
            rows.append((f"{prefix}{field.name}", json.dumps(default), comments.get(field.name, "")))
    return rows


def _print_command_help(name: str) -> None:
    schema, _ = COMMANDS[name].load()
    print(f"usage: divreg {name} [config.yaml] [key=value ...] [--print-config] [--debug]\n\n{COMMANDS[name].help}\n\n"
          "options:\n  --print-config  print the resolved config and exit\n  --debug         show tracebacks\n\n"
          "config keys (default, then what it is):")
    for key, default, comment in config_keys(schema):
        print(f"  {key} = {default}" + (f"\n      {comment}" if comment else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] in COMMANDS and any(a in ("-h", "--help") for a in argv[1:]):
        _print_command_help(argv[0])  # lists every config key: loads only this command's recipe
        raise SystemExit(0)
    parser = argparse.ArgumentParser(prog="divreg", description="Divergence-regularized training.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        sub.add_argument("arguments", nargs="*", metavar="[config.yaml] [key=value ...]")
        sub.add_argument("--debug", action="store_true",
                         help="show the full traceback of an error (also DIVREG_DEBUG=1)")
        sub.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parsed = parser.parse_args(argv)
    debug = parsed.debug or os.environ.get("DIVREG_DEBUG", "") not in ("", "0")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` does: student.kind=mymodule.Net works
        sys.path.insert(0, os.getcwd())
    try:
        from .config import load_config, to_yaml
    except ImportError as error:
        parser.exit(1, f"divreg: the command line needs the 'cli' extra ({error.name} is missing): "
                       "pip install 'divreg[cli]'\n")

    schema, run = COMMANDS[parsed.command].load()
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and parsed.command not in FSDP_COMMANDS:
        parser.exit(2, f"divreg {parsed.command}: error: this command does not shard a model: FSDP is for "
                       f"{', '.join(FSDP_COMMANDS)}; launch it without the FSDP config\n")
    try:
        config_path, overrides = _split_arguments(parsed.arguments)
        if parsed.command in FOLDER_ARGUMENT and config_path is not None and os.path.isdir(config_path):
            config_path, overrides = None, [f"{FOLDER_ARGUMENT[parsed.command]}={config_path}", *overrides]
        config = load_config(schema, config_path, overrides)
    except ValueError as error:
        parser.exit(2, f"divreg {parsed.command}: error: {error}\n")
    if parsed.print_config:
        print(to_yaml(config), end="")
        return 0
    if int(os.environ.get("RANK", "0")) == 0:  # one copy under torchrun / accelerate launch
        print(f"# divreg {parsed.command} config\n{to_yaml(config)}", end="")
    from .training import ResumableError  # (the run imports torch anyway)

    try:
        result = run(config)
        if type(result) is int:  # a command with an exit code of its own (serve)
            return result
    except KeyboardInterrupt:
        if debug:
            raise
        where = getattr(config, "output_dir", None)
        hint = (f"; the last checkpoints are in {os.path.join(where, 'checkpoints')}: run the same command with "
                "resume=true to continue") if where and hasattr(config, "resume") else ""
        print(f"\ndivreg {parsed.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        parser.exit(2, f"divreg {parsed.command}: error: {message} (add --debug for the traceback)\n")
    except ResumableError as error:
        if debug:
            raise
        where = getattr(config, "output_dir", None)
        hint = (f"; the steps done so far are checkpointed in {os.path.join(where, 'checkpoints')}: run the same "
                "command with resume=true once it is back") if where and hasattr(config, "resume") else ""
        parser.exit(1, f"divreg {parsed.command}: error: {' '.join(str(error).split())}{hint}\n")
    except OSError as error:
        if debug or error.errno not in WRITE_FAILURES:
            raise
        where = getattr(config, "output_dir", None)
        hint = (f"; the checkpoints written before are intact in {os.path.join(where, 'checkpoints')}: free space (or "
                "make the folder writable), then run the same command with resume=true") \
            if where and hasattr(config, "resume") else "; free space (or make the folder writable) and run it again"
        parser.exit(1, f"divreg {parsed.command}: error: writing {error.filename or 'a file'} failed "
                       f"({error.strerror or errno.errorcode.get(error.errno, error.errno)}){hint}\n")
    return 0


# A write that fails for lack of room or rights: the run stops in one line that says how to resume.
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


# the commands whose trained model FSDP shards (configs/accelerate/fsdp.yaml)
FSDP_COMMANDS = ("distill-lm", "rl", "preference")

# What a user can cause and fix: bad values, missing or unreadable files and folders. Anything
# else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


if __name__ == "__main__":
    sys.exit(main())
