"""Where the work runs: ``local`` (processes over the corpus's pieces; each piece's features
spilled to a file in the run's staging folder) or ``ray`` (the same functions as Ray tasks; the
features stay in Ray's object store, which spills to disk itself, so the same command runs on a
cluster via ``ray.init(address=...)``). Both give the same numbers: every phase is a function of
one piece, merged in piece order."""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from ...data.selection import Features, NgramHasher, Piece, featurize, read_piece
from ...training import fault_point


RETRIES = 3  # Ray's retries of a task whose worker process died
_HASHERS: dict[tuple, NgramHasher] = {}  # one per worker process and setting: its cache outlives a piece


def featurize_piece(piece: Piece, text_field: str, hasher: NgramHasher) -> Features:
    """The features of one piece, with this process's hasher of the same setting (a hasher
    arrives pickled with an empty cache; a warm cache hashes far fewer n-grams)."""
    key = (hasher.buckets, hasher.n, hasher.hash, hasher.cache_size, hasher.engine)
    hasher = _HASHERS.setdefault(key, hasher)
    return featurize((text for text, _ in read_piece(piece, text_field)), hasher)


def _summary(features: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return features.ngrams, features.words, features.counts()


def _local_featurize(piece: Piece, text_field: str, hasher: NgramHasher, spill: str):
    features = featurize_piece(piece, text_field, hasher)
    features.save(spill)
    return _summary(features)


def _local_weights(spill: str, log_diff: np.ndarray) -> np.ndarray:
    return Features.load(spill).log_weights(log_diff)


def _local_counts(spill: str, masks: np.ndarray) -> np.ndarray:
    features = Features.load(spill)
    return np.stack([features.counts(mask) for mask in masks])


class LocalBackend:
    """``workers`` processes (forked where the platform allows; 1: in this process)."""

    def __init__(self, workers: int, spill_dir: str):
        self.workers, self.spill_dir = workers, spill_dir
        os.makedirs(spill_dir, exist_ok=True)
        self._pool = None
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            # gc.freeze in each (forked) worker: its garbage collector never walks the objects it
            # inherited (torch, the parent's heap), which would copy their pages (copy-on-write)
            self._pool = ProcessPoolExecutor(workers, mp_context=context,
                                             initializer=gc.freeze)

    def _map(self, function, argument_lists, desc: str) -> list:
        if self._pool is None:
            with tqdm(argument_lists, desc=desc, leave=False) as bar:
                return [function(*arguments) for arguments in bar]
        futures = [self._pool.submit(function, *arguments) for arguments in argument_lists]
        with tqdm(total=len(futures), desc=desc, leave=False) as bar:
            for future in futures:  # in order; the bar moves as pieces finish in order
                future.result()
                bar.update()
        return [future.result() for future in futures]

    def featurize(self, pieces: list[Piece], text_field: str, hasher: NgramHasher, name: str):
        """(handles, summaries: (n-grams per example, words per example, counts)) per piece."""
        handles = [os.path.join(self.spill_dir, f"{name}-{i:06d}.npz") for i in range(len(pieces))]
        summaries = self._map(_local_featurize, [(piece, text_field, hasher, handle)
                                                 for piece, handle in zip(pieces, handles)], name)
        return handles, summaries

    def log_weights(self, handles: list, log_diff: np.ndarray) -> list[np.ndarray]:
        return self._map(_local_weights, [(handle, log_diff) for handle in handles], "raw: weights")

    def counts(self, handles: list, masks: list[np.ndarray], desc: str) -> list[np.ndarray]:
        """Per piece, (M, B) counts of the examples in each of M masks ((M, N_piece) each)."""
        return self._map(_local_counts, list(zip(handles, masks)), desc)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        _HASHERS.clear()  # (in this process, with workers=1) the n-gram cache goes with the run


class RayBackend:
    """Ray tasks over the pieces. ``address=None`` starts a local Ray with ``workers`` CPUs (unless
    one is running); otherwise ``ray.init(address=address)`` joins a cluster. A Ray session already
    running in this process is used as it is. The input paths must be readable from every node
    (shared storage), as for any Ray job that reads files. A user error in a task (a bad line) is
    raised here as the task's own ``ValueError``."""

    def __init__(self, workers: int, address: Optional[str]):
        try:
            import ray
        except ImportError:
            raise ValueError("backend=ray needs Ray: pip install 'divreg[ray]'") from None
        self.ray, self._started = ray, False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except ConnectionError as error:
                raise ValueError(f"backend=ray: cannot reach a Ray cluster at ray_address={address!r} ({error}); "
                                 "start one (ray start --head) or leave ray_address unset for a local Ray") from None
            self._started = True
        # a task whose worker dies (killed, out of memory) runs again elsewhere, up to RETRIES times
        self._featurize = ray.remote(num_returns=2, max_retries=RETRIES)(_ray_featurize)
        self._weights = ray.remote(max_retries=RETRIES)(_ray_weights)
        self._counts = ray.remote(max_retries=RETRIES)(_ray_counts)

    def _get(self, refs: list, desc: str) -> list:
        ray, pending = self.ray, list(refs)
        with tqdm(total=len(refs), desc=desc, leave=False) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
                try:
                    ray.get(done)
                except ray.exceptions.RayTaskError as error:
                    if isinstance(error.cause, ValueError):  # a user error: its one line, not a remote traceback
                        raise ValueError(str(error.cause)) from None
                    raise
        return ray.get(list(refs))

    def featurize(self, pieces: list[Piece], text_field: str, hasher: NgramHasher, name: str):
        pairs = [self._featurize.remote(piece, text_field, hasher) for piece in pieces]
        summaries = self._get([summary for summary, _ in pairs], f"{name}: featurize")
        return [features for _, features in pairs], summaries

    def log_weights(self, handles: list, log_diff: np.ndarray) -> list[np.ndarray]:
        shared = self.ray.put(log_diff)
        return self._get([self._weights.remote(handle, shared) for handle in handles], "raw: weights")

    def counts(self, handles: list, masks: list[np.ndarray], desc: str) -> list[np.ndarray]:
        return self._get([self._counts.remote(handle, mask) for handle, mask in zip(handles, masks)], desc)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def _ray_featurize(piece: Piece, text_field: str, hasher: NgramHasher):
    fault_point("select.ray_task")
    features = featurize_piece(piece, text_field, hasher)
    return _summary(features), features


def _ray_weights(features: Features, log_diff: np.ndarray) -> np.ndarray:
    return features.log_weights(log_diff)


def _ray_counts(features: Features, masks: np.ndarray) -> np.ndarray:
    return np.stack([features.counts(mask) for mask in masks])
