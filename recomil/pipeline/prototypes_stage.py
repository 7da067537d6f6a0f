"""Stage ``prototypes@<scale>``: per-fold k-means on the training slides of that fold only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from recomil.config import Params
from recomil.data.store import FeatureStore
from recomil.pipeline import paths
from recomil.pipeline.data_stages import load_split
from recomil.prototypes.kmeans import (
    StandardizedRows,
    feature_stats,
    lloyd_kmeans,
    minibatch_kmeans,
    sample_rows,
)


def member_kmeans_seed(p: Params, fold: int, member: int) -> int:
    """The k-means seed (row sample and initial centres) of ensemble member ``member`` of ``fold``:
    ``seed + fold`` for member 0 (the run without an ensemble), else drawn from ``(seed, fold, member)``."""
    if member == 0:
        return p.seed + fold
    return int(np.random.default_rng([p.seed, fold, member, 1]).integers(2**31))


def prototype_members(p: Params) -> int:
    """How many prototype sets each fold gets: ``ensemble`` with ``ensemble_protos: resample``, else 1."""
    return p.ensemble if p.ensemble_protos == "resample" else 1


def run_prototypes(p: Params, scale: str, store_dir: Path = paths.STORE, split_path: Path = paths.SPLIT,
                   out_root: Path = paths.PROTOTYPES) -> dict[str, Any]:
    """Fit ``num_protos_<scale>`` centres per fold; write ``fold_<k>.npz`` and ``summary.json``.

    With ``standardize`` the features are z-scored with the fold's training statistics first
    (saved beside the centres, which then live in the standardised space). With ``ensemble`` M > 1
    and ``ensemble_protos: resample`` each further member m gets centres of its own, fitted on the
    same training slides from another seed (:func:`member_kmeans_seed`): ``fold_<k>_m<m>.npz``.
    A scale the dataset does not have (single-scale data, ``low``) writes only a summary saying so.
    The written files depend only on the data, the split and the params (no timings), so a re-run
    that finds the same centres leaves them byte for byte; the returned summary adds each fit's
    k-means ``seconds`` (the stage log).
    """
    store = FeatureStore(store_dir)
    out = out_root / scale
    tmp = out.with_name(f".{scale}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    summary: dict[str, Any] = {"scale": scale, "present": scale in store.scales, "folds": []}
    seconds: list[float] = []
    if scale in store.scales:
        k = p.scale(scale).num_protos
        offsets, data = store.offsets(scale), store.array(scale)
        for fold, split in enumerate(load_split(split_path)):
            bags = [store.position(s) for s in split["train"]]
            dim = data.shape[1]
            mean, std = np.zeros(dim, np.float32), np.ones(dim, np.float32)
            view = data
            for member in range(prototype_members(p)):
                seed = member_kmeans_seed(p, fold, member)
                sample, full = sample_rows(offsets, bags, p.kmeans_sample_ratio, p.kmeans_max_per_slide, seed)
                if member == 0 and p.standardize and len(full):  # every training row: the same for all members
                    mean, std = feature_stats(data, full)
                    view = StandardizedRows(data, mean, std)
                try:
                    if p.kmeans_algorithm == "lloyd":
                        res = lloyd_kmeans(view, sample, k, working_rows=p.kmeans_lloyd_rows,
                                           batch_size=p.kmeans_batch_size, max_iter=p.kmeans_max_iter,
                                           seed=seed, count_rows=full)
                    else:
                        res = minibatch_kmeans(view, sample, k, batch_size=p.kmeans_batch_size,
                                               max_iter=p.kmeans_max_iter, seed=seed, count_rows=full)
                except ValueError as exc:
                    raise ValueError(f"prototypes@{scale}, fold {fold}: {exc} (num_protos_{scale} = {k})") from None
                np.savez(tmp / f"fold_{fold}{f'_m{member}' if member else ''}.npz", centres=res.centres,
                         counts=res.counts, mean=mean, std=std)
                summary["folds"].append({"fold": fold, **({"member": member} if member else {}), "k": k,
                                         "dim": int(res.centres.shape[1]), "inertia": res.inertia,
                                         "reseeded": res.reseeded, "instances_fit": res.instances,
                                         "instances_counted": int(full.shape[0]), "steps": res.steps})
                seconds.append(round(res.seconds, 3))
    # the file holds only what the centres determine, so that a re-run with the same centres leaves the
    # output's hash (and so the train stage under `dvc repro`) untouched; the k-means seconds go to the log
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {**summary, "folds": [{**f, "seconds": s} for f, s in zip(summary["folds"], seconds)]}


def load_prototypes(scales: tuple[str, ...], fold: int, root: Path = paths.PROTOTYPES,
                    expect: dict[str, tuple[int, int]] | None = None,
                    member: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Read one fold's centres and counts per scale (``np.load`` without pickles).

    Args:
        expect: scale -> ``(K, D)`` the model needs; a file that does not fit is an error.
        member: an ensemble member's own centres (``ensemble_protos: resample``); 0 = the fold's.
    """
    out = {}
    for scale in scales:
        path = root / scale / f"fold_{fold}{f'_m{member}' if member else ''}.npz"
        if not path.is_file():
            raise ValueError(f"{path}: prototype file missing; run the prototypes@{scale} stage"
                             f"{' (with ensemble and ensemble_protos as for train)' if member else ''}")
        with np.load(path, allow_pickle=False) as z:
            centres, counts = z["centres"].astype(np.float32), z["counts"].astype(np.int64)
            mean = z["mean"] if "mean" in z else np.zeros(centres.shape[1], np.float32)
            std = z["std"] if "std" in z else np.ones(centres.shape[1], np.float32)
        if expect and scale in expect and tuple(centres.shape) != expect[scale]:
            raise ValueError(f"{path}: prototypes have shape {list(centres.shape)}, but the model needs "
                             f"{list(expect[scale])} (num_protos_{scale}, feature width)")
        out[scale] = {"centres": centres, "counts": counts, "mean": mean, "std": std}
    return out
