"""vLLM as divreg's teacher server and generation engine: a server started from its own venv
(:class:`VLLMServer`, ``divreg serve``), a served teacher (:class:`ServedTeacher`: top-k
log-probs with the exact tail mass, a :class:`divreg.targets.SparseTopK` signal), and the
HTTP client they share (time-outs, retries with backoff)."""

from ._client import ServedSampler, ServedTeacher, ServerClient, ServerError, check_server_tokenizer
from ._server import VLLMServer, find_vllm_python, serve

__all__ = ["ServedSampler", "ServedTeacher", "ServerClient", "ServerError", "VLLMServer", "check_server_tokenizer",
           "find_vllm_python", "serve"]
