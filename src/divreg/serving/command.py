"""``divreg serve MODEL``: a vLLM server for a model folder, with the flags divreg's served teacher
and generation engine rely on (see :mod:`divreg.serving._server`), as TRL's ``trl vllm-serve``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ._server import serve


@dataclass
class ServeConfig:
    model: Optional[str] = None  # the model folder to serve (a save_pretrained folder, e.g. output_dir/models/<run>)
    # the Python that has vLLM; null: $DIVREG_VLLM_PYTHON, else .venv-vllm/bin/python (make vllm builds it)
    python: Optional[str] = None
    host: str = "127.0.0.1"  # where the server listens (127.0.0.1: this machine only)
    port: int = 8000
    max_logprobs: int = 64  # the largest top-k a served teacher may ask for
    max_model_len: int = 512  # the longest prompt + completion the server accepts
    dtype: str = "float32"  # the server's weights and compute: float32, bfloat16 or float16

    def __post_init__(self):
        if not self.model:
            raise ValueError("give the model folder to serve: divreg serve MODEL_DIR (or model=MODEL_DIR)")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("port", "max_logprobs", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def run(config: ServeConfig) -> int:
    return serve(config.model, config.python, config.host, config.port, config.max_logprobs, config.max_model_len,
                 config.dtype)
