"""``divreg select``: featurize target and raw corpus once (processes or Ray tasks over pieces),
fit the bag-of-n-grams models, weight every raw example, resample, write the selection with a
report and a plot. Everything is written into a temporary folder renamed to ``output_dir`` at the
end: an interrupted run leaves nothing that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np
from tqdm.auto import tqdm

from ..._table import format_table
from ...data.selection import (NgramHasher, fit_mask, kl_reduction, log_ratio, reference_order, resample,
                               resample_targets, split_counts)
from .config import SelectConfig
from ...data.selection import check_has_examples, check_readable, plan_pieces, read_piece
from ...training import fault_point
from .engine import LocalBackend, RayBackend


def _piece_bytes(config: SelectConfig, workers: int) -> int:
    sizes = [os.path.getsize(path) for path in config.raw + config.target if os.path.isfile(path)]
    return int(max(1 << 16, min(config.piece_mb * 2**20, sum(sizes) // (4 * workers) + 1)))


def _split(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1], axis=-1)


def _masked_counts(backend, handles, summaries, masks: np.ndarray, desc: str) -> np.ndarray:
    """(M, B) counts of the examples in each of M masks ((M, N) over the pieces' examples)."""
    if masks.all():
        return np.tile(sum(counts for _, _, counts in summaries), (len(masks), 1))
    per_piece = backend.counts(handles, _split(masks, [len(ngrams) for ngrams, _, _ in summaries]), desc)
    return sum(per_piece)


def _fit(config, backend, raw, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target counts (B,) or (T, B), the raw model's counts (B,), all raw counts (B,))."""
    budget, handles, summaries, pieces = config.token_budget(), *raw
    ngrams = np.concatenate([n for n, _, _ in summaries])
    per_file = np.bincount([p.file_index for p in pieces], weights=[len(n) for n, _, _ in summaries],
                           minlength=len(config.raw)).astype(int).tolist()
    mask = fit_mask(ngrams, per_file, budget, config.reference_num_proc)[None]
    raw_counts = _masked_counts(backend, handles, summaries, mask, "raw: fit")[0]
    all_counts = sum(counts for _, _, counts in summaries)
    t_handles, t_summaries, t_pieces = target
    if not config.separate_targets:  # the reference fits a pooled target on all its tokens
        return sum(counts for _, _, counts in t_summaries), raw_counts, all_counts
    counts = []
    for index, path in enumerate(config.target):
        mine = [i for i, p in enumerate(t_pieces) if p.file_index == index]
        sub = [t_summaries[i] for i in mine]
        ngrams = np.concatenate([n for n, _, _ in sub])
        mask = fit_mask(ngrams, [len(ngrams)], budget, config.reference_num_proc)[None]
        counts.append(_masked_counts(backend, [t_handles[i] for i in mine], sub, mask, f"target {index}: fit")[0])
    return np.stack(counts), raw_counts, all_counts


_OUTPUTS = ("report.json", "weights.png")  # with selected-*.jsonl: what a selection folder holds


def _check_output_dir(config: SelectConfig) -> None:
    """Refuse an ``output_dir`` whose replacement would delete anything but an earlier selection:
    the current folder or one above it, a folder holding an input, a folder with other files."""
    out = os.path.realpath(config.output_dir)
    here = os.path.realpath(os.getcwd())
    if here == out or here.startswith(out.rstrip(os.sep) + os.sep):
        raise ValueError(f"output_dir={config.output_dir!r} is the current folder or holds it: choose a new folder")
    for path in config.raw + config.target:
        real = os.path.realpath(path)
        if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
            raise ValueError(f"output_dir={config.output_dir!r} holds the input {path}: choose another output_dir")
    if os.path.isfile(out):
        raise ValueError(f"output_dir={config.output_dir!r} is a file: choose a folder")
    if os.path.isdir(out) and os.listdir(out):
        others = [name for name in os.listdir(out) if name not in _OUTPUTS
                  and not (name.startswith("selected-") and name.endswith(".jsonl"))]
        if others:
            raise ValueError(f"output_dir={config.output_dir!r} holds files that are not a selection "
                             f"({', '.join(sorted(others)[:3])}): choose another output_dir")
        if not config.overwrite:
            raise ValueError(f"{config.output_dir} already holds a selection: choose another output_dir or "
                             "overwrite=true")


def run(config: SelectConfig) -> dict:
    _check_output_dir(config)
    check_readable(config.raw, "raw")
    check_readable(config.target, "target")
    check_has_examples(config.raw, "raw")
    check_has_examples(config.target, "target", each=config.separate_targets)
    workers, times = config.num_workers(), {}
    hasher = NgramHasher(config.buckets, config.ngrams, "sha256" if config.mode == "compat" else "blake2b",
                         engine=config.tokenizer_engine)
    parent = os.path.dirname(os.path.abspath(config.output_dir))
    os.makedirs(parent, exist_ok=True)
    prefix = f".select-{os.path.basename(os.path.abspath(config.output_dir))}-"
    _remove_stale_staging(parent, prefix)
    staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    backend = None
    try:
        backend = (RayBackend(workers, config.ray_address) if config.backend == "ray"
                   else LocalBackend(workers, os.path.join(staging, ".features")))
        piece_bytes = _piece_bytes(config, workers)
        started = time.perf_counter()
        target_pieces, raw_pieces = plan_pieces(config.target, piece_bytes), plan_pieces(config.raw, piece_bytes)
        handles, summaries = backend.featurize(target_pieces + raw_pieces, config.text_field, hasher, "featurize")
        fault_point("select.featurized")
        split = len(target_pieces)
        target = (handles[:split], summaries[:split], target_pieces)
        raw = (handles[split:], summaries[split:], raw_pieces)
        for index, path in enumerate(config.target if config.separate_targets else ["+".join(config.target)]):
            if not sum(int(counts.sum()) for (_, _, counts), piece in zip(target[1], target_pieces)
                       if piece.file_index == index or not config.separate_targets):
                raise ValueError(f"the target {path} holds no words: give target examples with text")
        target_counts, raw_counts, all_counts = _fit(config, backend, raw, target)
        log_diff = log_ratio(target_counts, raw_counts, config.target_smoothing)  # (B,) or (T, B)
        times["fit"] = time.perf_counter() - started
        started = time.perf_counter()
        weights = np.concatenate(backend.log_weights(raw[0], log_diff))  # (N,) or (N, T)
        times["weights"] = time.perf_counter() - started
        report = _select_and_write(config, backend, raw, weights, target_counts, all_counts, staging, times)
        shutil.rmtree(os.path.join(staging, ".features"), ignore_errors=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private; the selection is not
        fault_point("select.written")
        if os.path.exists(config.output_dir):
            shutil.rmtree(config.output_dir)
            fault_point("select.replaced")  # a kill here leaves no output_dir; the run again writes it
        os.rename(staging, config.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if backend is not None:
            backend.close()
    _print(report, config.output_dir)
    return report


def _remove_stale_staging(parent: str, prefix: str) -> None:
    """Remove the staging folders that killed runs into the same ``output_dir`` left behind
    (named ``<prefix><pid>-...``, their process no longer running)."""
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: another select into this folder, whose staging is its own
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:
            continue


def _choose(config, weights, eligible, per_file, target_counts) -> tuple[list[int], list[np.ndarray]]:
    """(examples per target, sorted indices chosen for each target)."""
    order = reference_order(per_file, config.reference_num_proc)  # the noise is drawn in the reference's order
    if weights.ndim == 1:
        shares = [config.num_to_sample]
        picked = [resample(weights[order], eligible[order], config.num_to_sample, seed=config.seed, top_k=config.top_k)]
    else:
        proportions = config.target_proportions or target_counts.sum(axis=1)
        shares = split_counts(config.num_to_sample, proportions)
        picked = resample_targets(weights[order], eligible[order], shares, seed=config.seed, top_k=config.top_k)
    return shares, [np.sort(order[indices]) for indices in picked]


def _select_and_write(config, backend, raw, weights, target_counts, all_counts, staging, times) -> dict:
    handles, summaries, pieces = raw
    started = time.perf_counter()
    ngrams, n = np.concatenate([counts for counts, _, _ in summaries]), config.ngrams
    lengths = (ngrams + n * (n - 1) // 2) // n  # the reference's example length (= words, for >= n - 1 words)
    eligible = lengths >= config.min_example_length
    if config.num_to_sample > int(eligible.sum()):
        raise ValueError(f"num_to_sample={config.num_to_sample} exceeds the {int(eligible.sum())} raw examples with at "
                         f"least min_example_length={config.min_example_length} words")
    per_file = np.bincount([p.file_index for p in pieces], weights=[len(c) for c, _, _ in summaries],
                           minlength=len(config.raw)).astype(int).tolist()
    shares, chosen = _choose(config, weights, eligible, per_file, target_counts)
    candidates = np.where(eligible)[0]
    baselines = [[np.random.RandomState(config.seed + 1 + i).choice(candidates, share, replace=False)
                  for i in range(config.random_baselines)] for share in shares]
    times["resample"] = time.perf_counter() - started
    started = time.perf_counter()
    groups = [[indices] + rest for indices, rest in zip(chosen, baselines)]  # per target: selection, baselines
    separate = target_counts.ndim == 2
    # separate targets: the whole selection and random whole selections of the same size, scored on every target
    whole = [np.concatenate(chosen)] + [np.random.RandomState(config.seed + 1 + i).choice(
        candidates, config.num_to_sample, replace=False) for i in range(config.random_baselines)] if separate else []
    rows = [indices for group in groups for indices in group] + whole
    masks = np.zeros((len(rows), len(ngrams)), dtype=bool)
    for row, indices in enumerate(rows):
        masks[row, indices] = True
    counts = iter(_masked_counts(backend, handles, summaries, masks, "raw: selected counts"))
    per_target, overall = _kl_reductions(target_counts if separate else target_counts[None], groups, shares,
                                         len(whole), counts, all_counts)
    selected = np.zeros(len(ngrams), dtype=bool)
    for indices in chosen:
        selected[indices] = True
    written = _write(config, pieces, selected, staging)
    times["write"] = time.perf_counter() - started
    report = {"raw_examples": int(len(ngrams)), "eligible_examples": int(eligible.sum()), "selected": written,
              "mode": config.mode, "backend": config.backend, "workers": config.num_workers(), **overall,
              "targets": [dict(path=path, **values) for path, values in
                          zip(config.target if config.separate_targets else ["+".join(config.target)], per_target)],
              "log_weight_quantiles": {str(q): np.quantile(weights[eligible], q, axis=0).tolist()
                                       for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)},
              "seconds": times}
    with open(os.path.join(staging, "report.json"), "w") as out:
        json.dump(report, out, indent=2)
    _plot(weights, eligible, chosen, os.path.join(staging, "weights.png"))
    return report


def _kl_reductions(targets, groups, shares, wholes: int, counts, all_counts) -> tuple[list[dict], dict]:
    """(per target, top level) KL reductions from the selected counts in ``counts`` (one row per
    selection of ``groups``, then ``wholes`` rows of whole selections: the selection and its
    random baselines, with separate targets). Top level: with one (pooled) target its values;
    with separate targets the paper's figure, the mean over targets of the whole selection's KL
    reduction toward each, the per-target values kept under labelled names."""
    per_target = []
    for target, group, share in zip(targets, groups, shares):
        group_counts = [next(counts) for _ in group]  # one row per selection, also the empty ones
        values = [kl_reduction(target, all_counts, c) if share else None for c in group_counts]  # None: no examples
        per_target.append({"selected": share, "kl_reduction": values[0], "random_kl_reduction": _spread(values[1:])})
    if not wholes:
        return per_target, {key: per_target[0][key] for key in ("kl_reduction", "random_kl_reduction")}
    whole_counts = [next(counts) for _ in range(wholes)]
    by_target = [[kl_reduction(target, all_counts, c) for c in whole_counts] for target in targets]
    for entry, values in zip(per_target, by_target):
        entry["share_kl_reduction"] = entry.pop("kl_reduction")  # this target's share, toward this target
        entry["share_random_kl_reduction"] = entry.pop("random_kl_reduction")
        entry["whole_selection_kl_reduction"] = values[0]  # the whole selection, toward this target
    return per_target, {"kl_reduction": float(np.mean([values[0] for values in by_target])),
                        "random_kl_reduction": _spread([float(np.mean(c)) for c in zip(*by_target)][1:])}


def _spread(values: list) -> dict:
    """The values of random selections, their mean and sample standard deviation (ddof=1; None
    for fewer than two values: no spread can be estimated)."""
    values = [v for v in values if v is not None]
    return {"values": values, "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _write(config, pieces, selected: np.ndarray, staging: str) -> int:
    """The selected examples, in corpus order, as JSON lines in shards of ``shard_size``."""
    written, handle, index = 0, None, 0
    try:
        for piece in tqdm(pieces, desc="raw: write", leave=False):
            for _, line in read_piece(piece, config.text_field, parse=False):
                if selected[index]:
                    if written % config.shard_size == 0:
                        if handle is not None:
                            handle.close()
                        handle = open(os.path.join(staging, f"selected-{written // config.shard_size:05d}.jsonl"), "w",
                                      encoding="utf-8")
                    handle.write(line + "\n")
                    written += 1
                index += 1
    finally:
        if handle is not None:
            handle.close()
    return written


def _print(report: dict, output_dir: str) -> None:
    def row(name, selected, value, random):
        return {"target": name, "selected": selected, "of eligible": report["eligible_examples"],
                "KL reduction": "-" if value is None else value,
                "random selections": "-" if not random["values"] else f"{random['mean']:.4f}" + (
                    f" +- {random['std']:.4f}" if random["std"] is not None else " (1 selection)")}

    separate = "share_kl_reduction" in report["targets"][0]
    rows = [row(os.path.basename(t["path"]) + (" (its share)" if separate else ""), t["selected"],
                t["share_kl_reduction" if separate else "kl_reduction"],
                t["share_random_kl_reduction" if separate else "random_kl_reduction"]) for t in report["targets"]]
    if separate:
        rows.append(row("all (mean over targets)", report["selected"], report["kl_reduction"],
                        report["random_kl_reduction"]))
    else:
        rows[0]["target"] = "all"
    print(format_table(rows, ["target", "selected", "of eligible", "KL reduction", "random selections"]))
    print(f"outputs in {output_dir}")


def _plot(weights: np.ndarray, eligible: np.ndarray, chosen: list[np.ndarray], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = weights if weights.ndim == 2 else weights[:, None]
    figure, axes = plt.subplots(1, len(chosen), figsize=(6 * len(chosen), 3.5), squeeze=False)
    for target, (axis, indices) in enumerate(zip(axes[0], chosen)):
        selected = np.zeros(len(eligible), dtype=bool)
        selected[indices] = True
        rest, column = eligible & ~selected, weights[:, target]
        low, high = float(column[eligible].min()), float(column[eligible].max())
        bins = np.linspace(low, max(high, low + 1e-9), 60)
        axis.hist(column[rest], bins=bins, alpha=0.6, label=f"rest ({int(rest.sum())})")
        axis.hist(column[selected], bins=bins, alpha=0.6, label=f"selected ({int(selected.sum())})")
        axis.set_xlabel("log importance weight" + (f" (target {target})" if len(chosen) > 1 else ""))
        axis.set_ylabel("examples")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
