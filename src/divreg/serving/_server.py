"""A vLLM server for a model folder, started from its own Python (vLLM's CPU build pins torch and a
transformers older than divreg's, so it lives in its own venv: ``make vllm``), with the flags
divreg relies on:

- ``--logprobs-mode processed_logprobs``: the log-probs returned with sampled tokens are the
  sampler's own (temperature and top-k applied), the ones an importance-sampling correction needs
  (the default returns the raw T=1 model's: off by 0.2 at T=0.7 here);
- ``--max-logprobs K``: the largest top-k a served teacher may ask for (a 400 above it);
- ``VLLM_SERVER_DEV_MODE=1``: the ``/collective_rpc`` (weight reload) and ``/reset_prefix_cache``
  routes the generation engine syncs the trained weights through;
- ``--dtype float32`` by default (the trainer's precision on this machine).

``VLLMServer`` is a context manager: it starts the server on 127.0.0.1 and a free port, waits
until ``/health`` answers (or the process dies: its last log lines are in the error), and stops
it by its process group (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

VLLM_PYTHON_VARIABLE = "DIVREG_VLLM_PYTHON"
DEFAULT_VLLM_VENV = ".venv-vllm"


def find_vllm_python(python: Optional[str] = None) -> Optional[str]:
    """The Python that has vLLM: ``python`` if given, else ``$DIVREG_VLLM_PYTHON``, else
    ``.venv-vllm/bin/python`` in the current folder or the repository (``make vllm`` builds
    it); None when none exists."""
    candidates = [python, os.environ.get(VLLM_PYTHON_VARIABLE),
                  os.path.join(os.getcwd(), DEFAULT_VLLM_VENV, "bin", "python"),
                  str(Path(__file__).resolve().parents[3] / DEFAULT_VLLM_VENV / "bin" / "python")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if python:
        raise ValueError(f"--python {python!r} is not an executable Python; give the vLLM venv's bin/python "
                         "(make vllm builds one in .venv-vllm)")
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def server_command(python: str, model: str, port: int, host: str = "127.0.0.1", max_logprobs: int = 64,
                   max_model_len: int = 512, dtype: str = "float32", served_name: Optional[str] = None,
                   extra: Sequence[str] = ()) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server with divreg's flags (see the module)."""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", host,
            "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len),
            "--max-logprobs", str(max_logprobs), "--logprobs-mode", "processed_logprobs",
            "--served-model-name", served_name or "divreg", "--disable-log-stats", *extra]


class VLLMServer:
    """A vLLM server process for ``model`` (a Hugging Face folder); ``url`` once started.

    Example::

        with VLLMServer("outputs/distill_lm/teacher") as server:
            teacher = ServedTeacher(server.url, tokenizer, top_k=32)
    """

    def __init__(self, model: str, python: Optional[str] = None, host: str = "127.0.0.1", port: Optional[int] = None,
                 max_logprobs: int = 64, max_model_len: int = 512, dtype: str = "float32",
                 startup_timeout: float = 600.0, extra: Sequence[str] = (), log_path: Optional[str] = None,
                 kv_cache_gb: int = 1):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(f"{model!r} is not a model folder (no config.json): give a save_pretrained folder, e.g. "
                             "output_dir/models/<run> of a divreg run")
        found = find_vllm_python(python)
        if found is None:
            raise ValueError(f"no vLLM installation found: run `make vllm` (builds {DEFAULT_VLLM_VENV}), or set "
                             f"{VLLM_PYTHON_VARIABLE} / --python to a Python that has vllm")
        self.python, self.model, self.host = found, model, host
        self.port = port or free_port(host)
        self.command = server_command(found, model, self.port, host, max_logprobs, max_model_len, dtype,
                                      extra=extra)
        self.startup_timeout, self.kv_cache_gb = startup_timeout, kv_cache_gb
        self.log_path = log_path or os.path.join(tempfile.mkdtemp(prefix="divreg-vllm-"), "server.log")
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "VLLMServer":
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gb),
               "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # divreg's venv must not leak into vLLM's
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        import requests

        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.process.returncode} while starting; its "
                                   f"log ({self.log_path}) ends with:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM server did not answer /health within {self.startup_timeout:.0f} s; its log "
                           f"({self.log_path}) ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(model: str, python: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
          max_logprobs: int = 64, max_model_len: int = 512, dtype: str = "float32") -> int:
    """``divreg serve MODEL``: start the server, print its URL once healthy, run until Ctrl-C
    (or the server exits), then stop it. Returns the exit code."""
    server = VLLMServer(model, python, host, port, max_logprobs, max_model_len, dtype,
                        log_path=os.path.join(tempfile.mkdtemp(prefix="divreg-serve-"), "server.log"))
    print(f"starting vLLM ({server.python}) for {model} on {server.url}; log: {server.log_path}", flush=True)
    server.start()
    print(f"serving {model} at {server.url} (OpenAI-compatible; teacher.server={server.url} or "
          f"generation.server={server.url}); Ctrl-C stops it", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1.0)
        print(f"the vLLM server exited with code {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
