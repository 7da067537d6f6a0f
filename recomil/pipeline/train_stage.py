"""Stage ``train``: one model per fold, selected on that fold's validation slides only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recomil.config import Params
from recomil.data.store import FeatureStore
from recomil.pipeline import paths
from recomil.pipeline.data_stages import load_split
from recomil.pipeline.prototypes_stage import load_prototypes
from recomil.split import member_split
from recomil.training import distributed as ddp
from recomil.training.diagnostics import plot_curves
from recomil.training.threads import register as register_training
from recomil.training.tracking import Tracker, experiment_name
from recomil.training.trainer import member_file, model_params, train_fold


def _launch_torchrun(nproc: int) -> dict[str, Any]:
    """Re-run this stage under ``torchrun --standalone --nproc_per_node nproc`` and wait for it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__).resolve().parents[2] / "stages" / "train.py")]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training ({nproc} processes) failed with exit code {result.returncode}")
    return json.loads((paths.MODELS / "summary.json").read_text())


def run_train(p: Params, progress: bool = True) -> dict[str, Any]:
    """Train every fold; write ``models/fold_<k>/best.pt``, ``models/summary.json`` and the
    per-epoch log ``results/train_log/fold_<k>.csv``; with ``ensemble`` M > 1 also the members
    ``models/fold_<k>/best_m<m>.pt`` and ``results/train_log/fold_<k>_m<m>.csv`` (m = 1 .. M-1), each
    member selected on validation slides of its own with ``ensemble_val: resplit``
    (:func:`recomil.split.member_split`).

    With ``nproc`` > 1 and not already under torchrun, the stage relaunches itself with
    ``torchrun --standalone --nproc_per_node nproc`` (one machine); for several machines start
    ``torchrun --nnodes ... stages/train.py`` yourself (README, "Several GPUs and nodes").
    """
    if p.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(p.nproc)
    if p.threads == 0 and p.nproc == 1 and not torch.cuda.is_available():
        # counted from the stage's start, before the bags are read, so that a training queued beside
        # this one (dvc queue start -j 2) sees it when it picks its thread count
        register_training()
    distributed = ddp.init_from_env()
    try:
        return _train_all(p, progress)
    finally:
        if distributed:
            ddp.shutdown()


def _train_all(p: Params, progress: bool) -> dict[str, Any]:
    main = ddp.is_main()
    if main and ddp.world_size() > 1:
        print(f"train: data-parallel over {ddp.world_size()} processes", file=sys.stderr)
    store = FeatureStore(paths.STORE)
    folds = load_split(paths.SPLIT)
    if main:
        shutil.rmtree(paths.TRAIN_LOG, ignore_errors=True)
        shutil.rmtree(paths.TRAIN_CURVES, ignore_errors=True)
        for stale in paths.MODELS.glob("fold_*/best_m*.pt"):  # members of an earlier, larger ensemble
            stale.unlink()
    summaries = []
    scales = model_params(p, store).scales
    for k, split in enumerate(folds):
        expect = {s: (p.scale(s).num_protos, store.dims[s]) for s in scales} if p.model == "recomil" else None
        protos = load_prototypes(scales, k, paths.PROTOTYPES, expect)
        members = [train_member(p, store, split, k, m, protos, progress) for m in range(p.ensemble)]
        summaries.append({**members[0], "members": members[1:]} if p.ensemble > 1 else members[0])
    if main:
        (paths.MODELS / "summary.json").write_text(json.dumps({"folds": summaries}, indent=1))
        for k in range(len(folds)):
            for m in range(p.ensemble):
                Path(paths.RESUME / f"fold_{k}{f'_m{m}' if m else ''}.pt").unlink(missing_ok=True)
    return {"folds": summaries}


def train_member(p: Params, store: FeatureStore, split: dict[str, list[str]], k: int, m: int,
                 protos: dict[str, dict[str, np.ndarray]], progress: bool = False) -> dict[str, Any]:
    """Train ensemble member ``m`` of fold ``k`` (``split``: the fold's ``train``/``val``/``test``
    slide ids; ``protos``: the fold's prototypes, ``{scale: {"centres": (K, D), ...}}``) and write
    ``models/fold_<k>/best.pt`` (m = 0) or ``best_m<m>.pt`` with its log; returns the fold summary.
    Member m depends on ``(seed, fold, m)`` alone, not on ``ensemble``: the first M members of a
    larger ensemble are those of an ensemble of M."""
    main = ddp.is_main()
    scales = model_params(p, store).scales
    if m and p.model == "recomil" and p.ensemble_protos == "resample":  # centres of the member's own
        expect = {s: (p.scale(s).num_protos, store.dims[s]) for s in scales}
        protos = load_prototypes(scales, k, paths.PROTOTYPES, expect, member=m)
    tail = f"_m{m}" if m else ""
    run_id = hashlib.sha256(json.dumps([p.to_dict(), split, k, experiment_name(), *([m] if m else [])],
                                       sort_keys=True, default=str).encode()).hexdigest()[:20]
    tracker = Tracker(paths.TRAIN_LOG / f"fold_{k}{tail}.csv" if main else None,
                      mode=p.wandb_mode if main else "disabled", project=p.wandb_project,
                      name=f"train-fold{k}{tail}", group="recomil", config={**p.to_dict(), "fold": k,
                                                                            "member": m},
                      wandb_dir=paths.WANDB_DIR, run_id=run_id)
    resume = paths.RESUME / f"fold_{k}{tail}.pt"
    try:
        msplit = member_split(store.manifest, split, p, k, m)
        if main and msplit is not split:
            same = len(set(msplit["val"]) & set(split["val"]))
            print(f"train: fold {k} member {m} selects on validation slides of its own "
                  f"({len(msplit['val'])}, ensemble_val: resplit; {same} shared with member 0)",
                  file=sys.stderr)
        summary = train_fold(p, store, msplit, protos, paths.MODELS / f"fold_{k}", resume, tracker, k,
                             progress, member=m)
        tracker.summary({"best_epoch": summary["best_epoch"], "best_score": summary["best_score"]})
        if main:  # the per-epoch curves as a picture: DVC's vega plots stay blank offline
            png = paths.TRAIN_CURVES / f"fold_{k}{tail}.png"
            plot_curves(tracker.rows, png, f"fold {k}{f' member {m}' if m else ''}")
            tracker.image("train_curves", png)
        tracker.artifact(f"recomil-fold{k}{tail}-best", "model", paths.MODELS / f"fold_{k}" / member_file(m))
    finally:
        tracker.finish()
    return summary
