"""Score new, unlabelled slides with trained models (``recomil predict``).

A model directory (the ``models`` output of the train stage) holds one ``fold_<k>/best.pt`` per
fold; with several folds the slide probabilities are the mean over the fold models (an
ensemble). Features are read from files in any supported format and rounded to the store dtype
the model was trained on, so that held-out slides get exactly the probabilities that the
``evaluate`` stage computes from the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recomil.data.discovery import FileIndex, slide_key
from recomil.data.errors import DataError
from recomil.data.readers import SUFFIXES, Bag, read_bag
from recomil.inference import load_model, predict_bags


def model_files(path: str | Path) -> list[Path]:
    """Checkpoints under a trained-model directory, or the one file given."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("fold_*/best.pt")) or sorted(path.glob("*.pt"))
    if not files:
        raise DataError(f"{path}: no trained model found (expected fold_<k>/best.pt)")
    return files


def find_slides(paths: list[str | Path], scale: str) -> dict[str, Path]:
    """Slide id -> feature file at ``scale``, from files and folders."""
    found: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            index = FileIndex(p)
            entries = {sid: index.find(sid, scale) for sid in index.slide_ids(scale)}
        elif p.is_file():
            sid, sc = slide_key(p)
            if sc not in (None, scale):
                continue
            entries = {sid: p}
        else:
            raise DataError(f"{p}: no such feature file or folder")
        for sid, f in entries.items():
            if f is None or f.suffix.lower() not in SUFFIXES:
                continue
            if sid in found and found[sid] != f:
                raise DataError(f"slide {sid!r}: two feature files, {found[sid]} and {f}")
            found[sid] = f
    return found


def predict_slides(model_path: str | Path, features: list[str | Path], features_low: list[str | Path] | None,
                   topk: int = 0) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Per-slide probabilities (and optionally each slide's ``topk`` most attended patches)."""
    files = model_files(model_path)
    models = [load_model(f) for f in files]
    _, p, classes = models[0]
    scales = p.scales
    sources = {"high": find_slides(features, "high")}
    if "low" in scales:
        sources["low"] = find_slides(features_low or features, "low")
    ids = sorted(sources["high"])
    if not ids:
        raise DataError(f"no feature files found in {', '.join(map(str, features))}")
    dtype = np.dtype(p.store_dtype)
    bags: list[dict[str, torch.Tensor]] = []
    coords: list[dict[str, np.ndarray | None]] = []
    for sid in ids:
        bag, crd = {}, {}
        for scale in scales:
            path = sources[scale].get(sid)
            if path is None:
                raise DataError(f"slide {sid!r}: no {scale}-scale feature file (the model is dual-scale)")
            b: Bag = read_bag(path)
            width = getattr(p, f"feat_dim_{scale}")
            if b.features.shape[0] == 0 or b.features.shape[1] != width:
                raise DataError(f"slide {sid!r} ({path}): features {list(b.features.shape)} do not fit the model "
                                f"(width {width} at the {scale} scale)")
            if not np.isfinite(b.features).all():
                raise DataError(f"slide {sid!r} ({path}): NaN or Inf features")
            bag[scale] = torch.from_numpy(b.features.astype(dtype).astype(np.float32))
            crd[scale] = b.coords
        bags.append(bag)
        coords.append(crd)
    probs = np.zeros((len(ids), len(classes)))
    attention: list[dict[str, np.ndarray]] = []
    for model, _, _ in models:
        pr, extras = predict_bags(model, bags)
        probs += pr / len(models)
        attention = extras if not attention else [
            {k: a[k] + e[k] for k in a if k.startswith("attention_")} for a, e in zip(attention, extras)]
    out = pd.DataFrame({"slide_id": ids})
    for c, name in enumerate(classes):
        out[f"prob_{name}"] = probs[:, c]
    out["pred"] = [classes[i] for i in probs.argmax(1)]
    top = None
    if topk > 0:
        rows = []
        for sid, att, crd in zip(ids, attention, coords):
            for scale in scales:
                a = att[f"attention_{scale}"] / len(models)
                for rank, i in enumerate(np.argsort(-a, kind="stable")[:topk], 1):
                    c = crd[scale]
                    rows.append({"slide_id": sid, "scale": scale, "rank": rank, "patch_index": int(i),
                                 "attention": float(a[i]), "x": None if c is None else float(c[i, 0]),
                                 "y": None if c is None else float(c[i, 1])})
        top = pd.DataFrame(rows)
    return out, top
