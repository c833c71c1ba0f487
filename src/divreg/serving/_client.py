"""Clients of a vLLM server (OpenAI-compatible API): every request with a time-out, retried with
exponential backoff on connection errors and 5xx answers (urllib3's ``Retry``), and a failure that
survives the retries is one line naming the server and what to do."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..targets import SparseTopK
from ..training import ResumableError


class ServerError(ResumableError):
    """A server that does not answer, or answers with an error, after the retries: a run stops on
    it with a checkpoint of its steps done and resumes once the server is back."""


class ServerClient:
    """JSON requests to ``url`` (e.g. ``http://127.0.0.1:8000``): ``timeout`` seconds per request,
    ``retries`` retries with backoff ``backoff * 2**i`` seconds."""

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 4, backoff: float = 0.5):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server {url!r} is not a URL: give e.g. http://127.0.0.1:8000 (divreg serve prints it)")
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, backoff_factor=backoff,
                      status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def request(self, method: str, route: str, payload: Optional[dict] = None) -> Any:
        import requests

        try:
            answer = self.session.request(method, f"{self.url}{route}", json=payload, timeout=self.timeout)
        except requests.RequestException as error:
            raise ServerError(f"the server at {self.url} does not answer {route} ({type(error).__name__}); is it "
                              "running? (divreg serve MODEL starts one)") from None
        if answer.status_code >= 400:
            raise ServerError(f"the server at {self.url} answered {route} with {answer.status_code}: "
                              f"{answer.text[:300]}")
        return answer.json() if answer.content else None

    def post(self, route: str, payload: Optional[dict] = None) -> Any:
        return self.request("POST", route, payload)

    def get(self, route: str) -> Any:
        return self.request("GET", route)

    def model_name(self) -> str:
        """The name the server serves its model under (the ``model`` of every request)."""
        models = self.get("/v1/models")["data"]
        return models[0]["id"]


def _tail_logmass(top: Tensor) -> Tensor:
    """log(1 - sum_i exp(top_i)) over the last dimension, in float64 (-inf when the top-k hold
    all the mass up to rounding)."""
    total = torch.logsumexp(top.double(), -1).clamp(max=0.0)
    return torch.log(-torch.expm1(total))


class ServedTeacher:
    """A teacher served by vLLM: for any token sequences, the top-``top_k`` next-token log-probs
    of every position and the exact log-mass of the rest, as a :class:`SparseTopK` signal (what a
    teacher cache stores; the loss is the same bucket KL).

    vLLM's ``prompt_logprobs`` are the model's log-softmax at temperature 1 (temperature, top-k
    and top-p of the request do not change them: measured), so the tail mass
    ``1 - sum(top-k probabilities)`` is exact. A teacher *temperature* T != 1 is not applied: the
    top-k ratios re-temper exactly (``softmax(l_i / T)`` over the top-k), but the tail's mass under
    T depends on how its mass is spread over the other tokens, which the server does not report
    (for T < 1 it lies between spreading it evenly and piling it onto tokens as likely as the k-th,
    a range too wide to be useful), so ``temperature != 1`` is refused. Use the in-process teacher
    (or a cache written in-process) for a tempered teacher.

    Requests carry ``batch_size`` sequences each, ``concurrency`` in flight; ``check_tokenizer``
    compares the server's tokenization of probe texts with ``tokenizer``'s and refuses a server
    whose model reads another vocabulary."""

    def __init__(self, url: str, top_k: int, tokenizer=None, batch_size: int = 8, concurrency: int = 4,
                 timeout: float = 120.0, retries: int = 4, temperature: float = 1.0):
        if temperature != 1.0:
            raise ValueError(f"a served teacher's temperature={temperature} cannot be applied exactly (the server "
                             "reports the tail's total mass, not how it spreads); use temperature=1 or the "
                             "in-process teacher (teacher.path)")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.client = ServerClient(url, timeout=timeout, retries=retries)
        self.top_k, self.batch_size, self.concurrency = top_k, batch_size, concurrency
        self.model = self.client.model_name()
        if tokenizer is not None:
            check_server_tokenizer(self.client, self.model, tokenizer)

    def _score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[Tensor, Tensor]]:
        answer = self.client.post("/v1/completions", {
            "model": self.model, "prompt": [list(map(int, s)) for s in sequences], "max_tokens": 1,
            "prompt_logprobs": self.top_k, "temperature": 0.0})
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        if len(choices) != len(sequences):
            raise ServerError(f"the server at {self.client.url} answered {len(choices)} of {len(sequences)} sequences")
        out = []
        for sequence, choice in zip(sequences, choices):
            positions = choice["prompt_logprobs"][1:]  # entry 0 (the first token) has no prediction
            if len(positions) != len(sequence) - 1:
                raise ServerError(f"the server returned {len(positions)} positions for a sequence of {len(sequence)} "
                                  "tokens")
            ids = torch.empty(len(positions), self.top_k, dtype=torch.long)
            logprobs = torch.empty(len(positions), self.top_k, dtype=torch.float64)
            for t, entry in enumerate(positions):
                # the top-k by rank (the actual next token is added when it is outside them: dropped)
                ranked = sorted(((v["rank"], int(token), v["logprob"]) for token, v in entry.items()
                                 if v["rank"] <= self.top_k))[: self.top_k]
                if len(ranked) != self.top_k:
                    raise ServerError(f"the server returned {len(ranked)} of top_k={self.top_k} log-probs; start it "
                                      f"with --max-logprobs >= {self.top_k}")
                ids[t] = torch.tensor([token for _, token, _ in ranked])
                logprobs[t] = torch.tensor([max(value, -math.inf) for _, _, value in ranked], dtype=torch.float64)
            out.append((ids, logprobs))
        return out

    def score(self, sequences: Sequence[Sequence[int]]) -> list[SparseTopK]:
        """One :class:`SparseTopK` per sequence, of its positions ``0 .. len-2`` (each predicting
        the next token): ids (len-1, k), log-probs (len-1, k) float32, tail log-mass (len-1,)."""
        batches = [sequences[i:i + self.batch_size] for i in range(0, len(sequences), self.batch_size)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            scored = [item for batch in pool.map(self._score, batches) for item in batch]
        return [SparseTopK(ids, logprobs.float(), _tail_logmass(logprobs).float()) for ids, logprobs in scored]

    def signal(self, batch: dict[str, Tensor]) -> SparseTopK:
        """The served next-token signal of a (right-padded) batch, for positions ``0 .. T-2`` of
        ``input_ids`` (B, T): each row scored up to its last real token, padding rows with no mass
        (as :class:`divreg.targets.TeacherCache` pads)."""
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        rows, width = input_ids.shape[0], input_ids.shape[1] - 1
        lengths = mask.sum(1).tolist()
        scored = self.score([input_ids[row, : lengths[row]].tolist() for row in range(rows)])
        ids = torch.arange(self.top_k).expand(rows, width, self.top_k).clone()
        logprobs = torch.full((rows, width, self.top_k), -math.inf)
        tail = torch.zeros(rows, width)
        for row, signal in enumerate(scored):
            n = signal.ids.shape[0]
            ids[row, :n], logprobs[row, :n], tail[row, :n] = signal.ids, signal.logprobs, signal.tail_logmass
        return SparseTopK(ids, logprobs, tail).to_device(input_ids.device)


PROBE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1\n", "12 + 34 = 46")


def check_server_tokenizer(client: ServerClient, model: str, tokenizer) -> None:
    """Refuse a server whose model tokenizes probe texts differently from ``tokenizer`` (another
    vocabulary: its log-probs would be of other tokens), or cannot score the last token id."""
    for text in PROBE_TEXTS:
        served = client.post("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})["tokens"]
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        if served != ours:
            raise ValueError(f"the server at {client.url} tokenizes {text!r} as {served[:8]}..., the run's tokenizer as "
                             f"{ours[:8]}...: serve the model that goes with this tokenizer (or pass its tokenizer)")
    last = len(tokenizer) - 1
    try:
        client.post("/v1/completions", {"model": model, "prompt": [[last, last]], "max_tokens": 1,
                                        "prompt_logprobs": 1})
    except ServerError as error:
        raise ValueError(f"the server at {client.url} cannot score token id {last} (the run's tokenizer has "
                         f"{len(tokenizer)} tokens): a smaller vocabulary ({error})") from None


class ServedSampler:
    """vLLM as the generation engine of a model being trained: :meth:`sync` puts the trainer's
    current weights into the server and checks them on a probe sequence, :meth:`sample` draws
    completions with the sampler's own (processed) log-probs of every sampled token.

    The sync writes the model's state dict as one safetensors file in ``weights_dir`` (a folder
    that holds only it), asks the server to reload its weights from there
    (``/collective_rpc reload_weights``: the server runs with ``VLLM_SERVER_DEV_MODE=1``, as
    :class:`VLLMServer` starts it) and drops its prefix cache (``/reset_prefix_cache``: else
    attention states of the old weights are reused). It then scores a fixed probe sequence and
    compares the server's log-probs with the trainer's: a difference above ``tolerance`` is an
    error, never a silent drift (fp32 on CPU: 4e-7 measured). The whole state dict is sent each
    time (a partial update of a fused group, q without k and v, corrupts the layer in vLLM).
    """

    def __init__(self, url: str, tokenizer, weights_dir: str, tolerance: float = 1e-3, concurrency: int = 8,
                 timeout: float = 300.0, retries: int = 4):
        self.client = ServerClient(url, timeout=timeout, retries=retries)
        self.model = self.client.model_name()
        check_server_tokenizer(self.client, self.model, tokenizer)
        self.tokenizer, self.weights_dir, self.tolerance, self.concurrency = (tokenizer, weights_dir, tolerance,
                                                                              concurrency)
        vocabulary = len(tokenizer)
        self.probe = [(7 * i + 3) % vocabulary for i in range(24)]

    def sync(self, model) -> dict[str, float]:
        """The trainer's weights into the server, checked on the probe; returns the seconds it
        took and the probe's largest log-prob difference."""
        import os
        import time

        from safetensors.torch import save_file, save_model

        started = time.perf_counter()
        hf_model = model.model
        os.makedirs(self.weights_dir, exist_ok=True)
        path = os.path.join(self.weights_dir, "model.safetensors")
        if hasattr(hf_model, "merge_adapter"):  # LoRA: the merged weights (the model itself is left as it is)
            save_file(merged_lora_state(hf_model), f"{path}.tmp")
        else:
            save_model(hf_model, f"{path}.tmp")  # (shared tensors, e.g. tied embeddings, written once)
        os.replace(f"{path}.tmp", path)
        self.client.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": self.weights_dir}})
        self.client.post("/reset_prefix_cache")
        seconds = time.perf_counter() - started
        error = self.probe_error(model)
        if not error <= self.tolerance:
            raise RuntimeError(f"after the weight sync the server's log-probs differ from the trainer's by {error:.3g} "
                               f"on the probe (tolerance {self.tolerance}): the server does not hold the trained "
                               "weights (another model, dtype or a failed reload); check its log")
        return {"sync_seconds": seconds, "sync_probe_error": error}

    def sync_from_main(self, accelerator, model) -> dict[str, float]:
        """:meth:`sync` on the main process (one server, one copy of the weights), every process
        waiting for it; the sync's figures on the main process, {} elsewhere."""
        synced = self.sync(model) if accelerator.is_main_process else {}
        accelerator.wait_for_everyone()
        return synced

    def probe_error(self, model) -> float:
        """The largest |log p_server - log p_trainer| (temperature 1) of the probe's tokens."""
        answer = self.client.post("/v1/completions", {"model": self.model, "prompt": [self.probe], "max_tokens": 1,
                                                      "prompt_logprobs": 0})
        entries = answer["choices"][0]["prompt_logprobs"]
        served = torch.tensor([entries[t][str(self.probe[t])]["logprob"] for t in range(1, len(self.probe))],
                              dtype=torch.float64)
        ids = torch.tensor([self.probe], device=next(model.parameters()).device)
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids))[0, :-1].double()
        local = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu()
        return float((served - local).abs().max())

    def _sample_one(self, request: tuple) -> list[tuple[list[int], list[float]]]:
        prompt, copies, max_new_tokens, temperature, top_p, seed = request
        answer = self.client.post("/v1/completions", {
            "model": self.model, "prompt": [list(map(int, prompt))], "n": copies, "max_tokens": max_new_tokens,
            "temperature": temperature, "top_p": top_p, "top_k": -1, "seed": seed, "logprobs": 0,
            "return_token_ids": True, "skip_special_tokens": False})
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        out = []
        for choice in choices:
            ids, logprobs = choice["token_ids"], choice["logprobs"]["token_logprobs"]
            if len(ids) != len(logprobs):
                raise ServerError(f"the server returned {len(ids)} tokens and {len(logprobs)} log-probs")
            if any(not 0 <= t < len(self.tokenizer) for t in ids):
                raise ServerError(f"the server sampled a token id outside the run's {len(self.tokenizer)}-token "
                                  "tokenizer (a padded output layer): serve a model whose rows match its tokenizer")
            eos = self.tokenizer.eos_token_id
            if eos in ids:  # up to and including the first EOS, as divreg's HF sampling keeps it
                ids, logprobs = ids[: ids.index(eos) + 1], logprobs[: ids.index(eos) + 1]
            out.append((ids, logprobs))
        return out

    def sample(self, prompts: Sequence[Sequence[int]], copies: int, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0) -> list[tuple[list[int], list[float]]]:
        """``copies`` completions of each prompt (contiguous, prompt-major): each its token ids (up
        to and including the first EOS) and the sampler's log-probs of them (temperature and
        top-p applied: the server's ``processed_logprobs``). Each prompt is one request with its
        own seed (``seed`` and the prompt's index), so a run is reproducible given the server."""
        jobs = [(prompt, copies, max_new_tokens, temperature, top_p, (seed * 1_000_003 + index) % (2 ** 31))
                    for index, prompt in enumerate(prompts)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return [item for items in pool.map(self._sample_one, jobs) for item in items]


def merged_lora_state(peft_model) -> dict[str, Tensor]:
    """The state dict of a peft LoRA model's base with every adapted weight merged,
    ``W + get_delta_weight(adapter)`` (peft's own delta: B A times alpha / r), under the base
    model's names, computed without touching the model (no merge and unmerge, whose rounding
    would change the trained weights); a tensor shared by two names (tied embeddings) once."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.base_layer.weight.detach()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).detach()
            merged[f"{name}.weight"] = weight
    state, seen = {}, set()
    for key, tensor in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        tensor = merged.get(key, tensor.detach())
        if tensor.data_ptr() in seen:  # tied: the server ties them again on load
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.contiguous()
    return state
