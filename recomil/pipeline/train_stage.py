"""Stage ``train``: one model per fold, selected on that fold's validation slides only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from recomil.config import Params
from recomil.data.store import FeatureStore
from recomil.pipeline import paths
from recomil.pipeline.data_stages import load_split
from recomil.pipeline.prototypes_stage import load_prototypes
from recomil.training.tracking import Tracker
from recomil.training.trainer import train_fold


def run_train(p: Params, progress: bool = True) -> dict[str, Any]:
    """Train every fold; write ``models/fold_<k>/best.pt``, ``models/summary.json`` and the
    per-epoch log ``results/train_log/fold_<k>.csv``."""
    store = FeatureStore(paths.STORE)
    folds = load_split(paths.SPLIT)
    shutil.rmtree(paths.TRAIN_LOG, ignore_errors=True)
    summaries = []
    for k, split in enumerate(folds):
        expect = {s: (p.scale(s).num_protos, store.dims[s]) for s in store.scales} if p.model == "recomil" else None
        protos = load_prototypes(store.scales, k, paths.PROTOTYPES, expect)
        tracker = Tracker(paths.TRAIN_LOG / f"fold_{k}.csv", mode=p.wandb_mode, project=p.wandb_project,
                          name=f"train-fold{k}", group="recomil", config={**p.to_dict(), "fold": k},
                          wandb_dir=paths.WANDB_DIR)
        resume = paths.RESUME / f"fold_{k}.pt"
        try:
            summary = train_fold(p, store, split, protos, paths.MODELS / f"fold_{k}", resume, tracker, k, progress)
            tracker.summary({"best_epoch": summary["best_epoch"], "best_score": summary["best_score"]})
            tracker.artifact(f"recomil-fold{k}-best", "model", paths.MODELS / f"fold_{k}" / "best.pt")
        finally:
            tracker.finish()
        summaries.append(summary)
    (paths.MODELS / "summary.json").write_text(json.dumps({"folds": summaries}, indent=1))
    for k in range(len(folds)):
        Path(paths.RESUME / f"fold_{k}.pt").unlink(missing_ok=True)
    return {"folds": summaries}
