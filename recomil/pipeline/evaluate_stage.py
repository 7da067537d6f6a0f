"""Stage ``evaluate``: test-set metrics per fold and over folds, predictions, ROC and confusion plots."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recomil.config import Params
from recomil.data.store import FeatureStore
from recomil.data.wsi import SlideIndex
from recomil.evaluation.explain import write_explanations
from recomil.evaluation.localisation import load_ground_truth, localisation_auc
from recomil.inference import load_model, member_files, predict_members
from recomil.metrics import (
    auc_score,
    bootstrap_auc,
    bootstrap_mean_auc,
    classification_metrics,
    confusion,
    roc_points,
)
from recomil.pipeline import paths
from recomil.pipeline.data_stages import load_split
from recomil.training.bags import BagSet
from recomil.training.tracking import Tracker


def _aggregate(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over folds with ``_std`` companions (None where any fold is undefined)."""
    out: dict[str, Any] = {}
    for key in per_fold[0]:
        vals = [m.get(key) for m in per_fold]
        if any(v is None for v in vals):
            out[key], out[f"{key}_std"] = None, None
        else:
            out[key], out[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
    return out


def drop_degenerate_intervals(metrics: dict[str, Any], where: str = "") -> None:
    """An interval whose ends coincide (every resample gave the same AUC, e.g. a few perfectly
    ranked slides) is false precision: report it as undefined (null), with a warning. The same
    rule holds for every interval of the metrics, the per-fold ones (``per_fold``) included."""
    for key in [k for k in metrics if k.endswith("_ci_low")]:
        hi_key = key.replace("_ci_low", "_ci_high")
        if metrics[key] is not None and metrics.get(hi_key) is not None and abs(metrics[key] - metrics[hi_key]) < 1e-9:
            print(f"warning: evaluate: the bootstrap interval of {where}{key[:-7]} is degenerate "
                  f"({metrics[key]:.3f}); reported as undefined (null)", file=sys.stderr)
            metrics[key] = metrics[hi_key] = None
    for k, fold in enumerate(metrics.get("per_fold") or []):
        drop_degenerate_intervals(fold, f"fold {k}'s ")


def run_evaluate(p: Params) -> dict[str, Any]:
    """Evaluate each fold's best model on its test slides; write metrics, predictions and plots.

    On the demo cohort, whose per-patch ground truth is known, ``loc_auc`` measures whether the
    high-scale patch evidence points at the tumour (the instance head's patch probability with
    ``instance_stream``, else the attention; ``loc_auc_random``: the random-score control).
    """
    store = FeatureStore(paths.STORE)
    folds = load_split(paths.SPLIT)
    classes = store.classes
    per_fold, frames, all_labels, all_probs = [], [], [], []
    attentions, truths = [], []
    pngs: list[Path] = []
    shutil.rmtree(paths.EXPLAIN, ignore_errors=True)
    slides = SlideIndex(p.slides_dir) if p.slides_dir else None
    for k, split in enumerate(folds):
        members = [load_model(f)[0] for f in member_files(paths.MODELS / f"fold_{k}")]
        model = members[0]
        test = BagSet(store, split["test"], tuple(model.scales))
        probs, extras = predict_members(members, (test.bag(j) for j in range(len(test))))
        m = classification_metrics(test.labels, probs)
        pngs += write_explanations(paths.EXPLAIN, model, test, extras, fold=k, slides=slides, probs=probs,
                                   classes=classes, gallery_k=p.heatmap_topk)
        if p.dataset == "demo":
            for sid, e, y in zip(split["test"], extras, test.labels):
                if y == classes.index("tumor"):
                    attentions.append(e["evidence_high"])
                    truths.append(load_ground_truth(paths.STORE / "ground_truth", sid))
        per_fold.append(m)
        df = pd.DataFrame({"fold": k, "slide_id": split["test"], "label": [classes[i] for i in test.labels]})
        for c, name in enumerate(classes):
            df[f"prob_{name}"] = probs[:, c]
        df["pred"] = [classes[i] for i in probs.argmax(1)]
        frames.append(df)
        all_labels.append(test.labels)
        all_probs.append(probs)
    labels, probs = np.concatenate(all_labels), np.concatenate(all_probs)
    metrics: dict[str, Any] = dict(per_fold[0]) if len(folds) == 1 else _aggregate(per_fold)
    if len(folds) == 1:
        metrics["auc_ci_low"], metrics["auc_ci_high"] = bootstrap_auc(labels, probs, p.bootstrap, p.seed)
    else:
        # `auc` is the mean over folds, so its interval is that of the mean over folds; the pooled
        # predictions of the different fold models (the ROC curve, the confusion matrix) get an
        # AUC and an interval of their own, and every fold its own interval
        metrics["auc_ci_low"], metrics["auc_ci_high"] = bootstrap_mean_auc(
            list(zip(all_labels, all_probs)), p.bootstrap, p.seed)
        metrics["auc_pooled"] = auc_score(labels, probs)
        metrics["auc_pooled_ci_low"], metrics["auc_pooled_ci_high"] = bootstrap_auc(labels, probs, p.bootstrap,
                                                                                     p.seed)
        for k, (y, pr) in enumerate(zip(all_labels, all_probs)):
            per_fold[k]["auc_ci_low"], per_fold[k]["auc_ci_high"] = bootstrap_auc(y, pr, p.bootstrap, p.seed + k)
    metrics["n_test"] = int(len(labels))
    small = min(np.bincount(y, minlength=len(classes)).min() for y in all_labels)
    if small < 10:
        print(f"warning: evaluate: a test set has only {small} slide(s) of its smallest class; its AUC interval is "
              f"wide or undefined and its metrics move a lot with a single slide", file=sys.stderr)
    if len(folds) > 1:
        metrics["per_fold"] = per_fold
    drop_degenerate_intervals(metrics)
    if p.dataset == "demo":
        metrics.update(localisation_auc(attentions, truths, p.seed))
    if "per_fold" in metrics:  # last in metrics.json, as before
        metrics["per_fold"] = metrics.pop("per_fold")
    for key, value in metrics.items():
        if value is None and not key.endswith("_std"):
            print(f"evaluate: metric {key!r} is undefined on this test set (reported as null)", file=sys.stderr)
    paths.RESULTS.mkdir(parents=True, exist_ok=True)
    paths.PLOTS.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(paths.PREDICTIONS, index=False)
    pd.DataFrame(roc_points(labels, probs), columns=["fpr", "tpr", "threshold"]).to_csv(
        paths.PLOTS / "roc.csv", index=False)
    cm = confusion(labels, probs)
    pd.DataFrame([{"actual": classes[i], "predicted": classes[j]} for i in range(len(classes))
                  for j in range(len(classes)) for _ in range(int(cm[i, j]))],
                 columns=["actual", "predicted"]).to_csv(paths.PLOTS / "confusion.csv", index=False)
    _write_json(paths.METRICS, metrics)
    _log_wandb(p, metrics, labels, probs, classes, pngs)
    return metrics


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _log_wandb(p: Params, metrics: dict[str, Any], labels: np.ndarray, probs: np.ndarray,
               classes: list[str], pngs: list[Path]) -> None:
    tracker = Tracker(None, mode=p.wandb_mode, project=p.wandb_project, name="evaluate", group="recomil",
                      config=p.to_dict(), wandb_dir=paths.WANDB_DIR, job_type="evaluate")
    try:
        if tracker.run is not None:
            import wandb

            values: dict[str, Any] = {f"test/{k}": v for k, v in metrics.items()
                                      if isinstance(v, (int, float)) and v is not None}
            values["test/confusion_matrix"] = wandb.plot.confusion_matrix(
                y_true=labels.tolist(), preds=probs.argmax(1).tolist(), class_names=classes)
            if len(np.unique(labels)) > 1:
                values["test/roc"] = wandb.plot.roc_curve(labels.tolist(), probs.tolist(), labels=classes)
            for png in sorted(pngs, key=lambda q: q.parent.name != "slides")[:50]:  # slide overlays first
                values[f"{'slide' if png.parent.name == 'slides' else 'heatmap'}/{png.stem}"] = wandb.Image(str(png))
            tracker.log(values)  # once: wandb keeps the last logged values as the run summary
    finally:
        tracker.finish()
