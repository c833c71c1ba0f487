"""An offline teacher: top-k log-probabilities and tail mass per position, written once and
read lazily (memory-mapped), keyed by example id so any shuffling, accumulation or process
layout fetches the right rows."""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from ._signals import SparseTopK

MANIFEST = "manifest.json"


class TeacherCacheWriter:
    """Append the teacher's sparse signal example by example; ``close`` writes the index.

    Files: ``shard-XXXXX-{ids,logprobs,tail}.npy`` (positions x k int32 / float32, positions
    float32) and ``index.json`` (example id -> [shard, first row, rows]), ``manifest.json``.
    """

    def __init__(self, directory: str, top_k: int, temperature: float, rows_per_shard: int = 1 << 20,
                 manifest: Optional[dict] = None):
        os.makedirs(directory, exist_ok=True)
        self.directory, self.top_k, self.rows_per_shard = directory, top_k, rows_per_shard
        self.manifest = {"top_k": top_k, "temperature": temperature, **(manifest or {})}
        self.index: dict[str, list[int]] = {}
        self._buffers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._rows, self._shard = 0, 0

    def add(self, example_id: int, logits: Tensor) -> None:
        """Store the signal of one example from its teacher logits (T, V) at the cache temperature."""
        log_p = torch.log_softmax(logits.float() / self.manifest["temperature"], -1)  # (T, V)
        top, ids = log_p.topk(self.top_k, -1)  # (T, k)
        self.add_top_k(example_id, ids, top, torch.logsumexp(log_p.scatter(-1, ids, -torch.inf), -1))

    def add_top_k(self, example_id: int, ids: Tensor, logprobs: Tensor, tail_logmass: Tensor) -> None:
        """Store the signal of one example given as its top-k already: ids and log-probs (T, k)
        at the cache temperature, and the log-mass of the rest (T,) (e.g. from a served teacher)."""
        if str(example_id) in self.index:
            raise ValueError(f"example id {example_id} is already in the cache")
        if ids.shape != logprobs.shape or ids.shape[-1] != self.top_k or tail_logmass.shape != ids.shape[:1]:
            raise ValueError(f"ids and logprobs must be (T, {self.top_k}) and tail_logmass (T,), got "
                             f"{tuple(ids.shape)}, {tuple(logprobs.shape)}, {tuple(tail_logmass.shape)}")
        top, tail = logprobs.float(), tail_logmass.float()
        if self._rows + len(ids) > self.rows_per_shard and self._buffers:
            self._flush()
        self.index[str(example_id)] = [self._shard, self._rows, len(ids)]
        self._buffers.append((ids.int().numpy(), top.numpy(), tail.numpy()))
        self._rows += len(ids)

    def _flush(self) -> None:
        for position, name in enumerate(("ids", "logprobs", "tail")):
            array = np.concatenate([buffer[position] for buffer in self._buffers])
            np.save(os.path.join(self.directory, f"shard-{self._shard:05d}-{name}.npy"), array)
        self._buffers, self._rows, self._shard = [], 0, self._shard + 1

    def close(self) -> None:
        if self._buffers:
            self._flush()
        with open(os.path.join(self.directory, "index.json"), "w") as handle:
            json.dump(self.index, handle)
        with open(os.path.join(self.directory, MANIFEST), "w") as handle:
            json.dump({**self.manifest, "shards": self._shard}, handle, indent=1)


class TeacherCache:
    """Read side: ``lookup(example_ids, positions)`` gives (B, positions, k) ids and log-probs
    and (B, positions) tail log-mass; rows past an example's end are padding (no mass)."""

    def __init__(self, directory: str):
        manifest_path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise ValueError(f"{directory!r} is not a teacher cache (no {MANIFEST}); write one with divreg cache-teacher")
        with open(manifest_path) as handle:
            self.manifest = json.load(handle)
        with open(os.path.join(directory, "index.json")) as handle:
            self.index = json.load(handle)
        self.shards = [
            tuple(np.load(os.path.join(directory, f"shard-{s:05d}-{name}.npy"), mmap_mode="r")
                  for name in ("ids", "logprobs", "tail"))
            for s in range(self.manifest["shards"])
        ]
        self.top_k, self.temperature = self.manifest["top_k"], self.manifest["temperature"]

    def lookup(self, example_ids: Iterable[int], positions: int) -> tuple[Tensor, Tensor, Tensor]:
        example_ids = [int(e) for e in example_ids]
        ids = np.tile(np.arange(self.top_k, dtype=np.int64), (len(example_ids), positions, 1))
        logprobs = np.full((len(example_ids), positions, self.top_k), -np.inf, dtype=np.float32)
        tail = np.zeros((len(example_ids), positions), dtype=np.float32)
        for row, example_id in enumerate(example_ids):
            if str(example_id) not in self.index:
                raise ValueError(f"example id {example_id} is not in the teacher cache; was it written for this data?")
            shard, start, length = self.index[str(example_id)]
            n = min(length, positions)
            shard_ids, shard_logprobs, shard_tail = self.shards[shard]
            ids[row, :n] = shard_ids[start:start + n]
            logprobs[row, :n] = shard_logprobs[start:start + n]
            tail[row, :n] = shard_tail[start:start + n]
        return torch.from_numpy(ids), torch.from_numpy(logprobs), torch.from_numpy(tail)

    def signal(self, batch: dict[str, Tensor]) -> SparseTopK:
        """The cached next-token signal of a batch (its ``example_ids`` pick the rows), for
        positions ``0 .. T-2`` of ``input_ids`` (B, T), on the batch's device."""
        ids, logprobs, tail = self.lookup(batch["example_ids"].tolist(), batch["input_ids"].shape[1] - 1)
        return SparseTopK(ids, logprobs, tail).to_device(batch["input_ids"].device)
