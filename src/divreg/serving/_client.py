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


class ServerError(RuntimeError):
    """A server that does not answer, or answers with an error, after the retries."""


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
