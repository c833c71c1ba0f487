"""The vLLM server the serving tests share: a tiny Llama with its own BPE tokenizer, saved to a
temporary folder, served from the vLLM venv (``make vllm``) on a free 127.0.0.1 port for the
whole session, stopped by its process group at the end. Without a vLLM installation the tests
skip with one line, except under CI (``CI`` set), where that is a failure."""

import os

import pytest
import torch

from divreg.models import CausalLM, ModelSource, build_causal_lm, save_model_folder
from divreg.serving import VLLMServer, find_vllm_python

from ..recipes import lm_fixtures as fx

# head_dim 32 (vLLM's CPU attention takes 32, 64, 80, ...), 2 layers, the tests' 300-token BPE vocabulary
SERVED_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
                "tie_word_embeddings": False}


def served_model(seed: int = 0) -> CausalLM:
    tokenizer = fx.tokenizer()
    return CausalLM(build_causal_lm(ModelSource(config=SERVED_LLAMA), tokenizer, seed), len(tokenizer)).eval()


@pytest.fixture(scope="session")
def vllm_python():
    python = find_vllm_python()
    if python is None:
        message = "no vLLM installation (make vllm builds .venv-vllm; or set DIVREG_VLLM_PYTHON)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the server tests")
        pytest.skip(message)
    return python


@pytest.fixture(scope="session")
def served(vllm_python, tmp_path_factory):
    """(server, model folder, the same model in-process, tokenizer)."""
    folder = tmp_path_factory.mktemp("served") / "teacher"
    model, tokenizer = served_model(), fx.tokenizer()
    save_model_folder(model, tokenizer, str(folder))
    with VLLMServer(str(folder), python=vllm_python, max_logprobs=64, max_model_len=256) as server:
        yield server, folder, model, tokenizer


@pytest.fixture
def torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
