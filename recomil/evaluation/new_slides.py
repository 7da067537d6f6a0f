"""Score new, unlabelled slides with trained models (``recomil predict``).

A model directory (the ``models`` output of the train stage) holds one ``fold_<k>/best.pt`` per
fold; with several folds the slide probabilities are the mean over the fold models (an
ensemble). Features are read from files in any supported format and rounded to the store dtype
the model was trained on, so that held-out slides get exactly the probabilities that the
``evaluate`` stage computes from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recomil.data.discovery import FileIndex, slide_key
from recomil.data.errors import DataError
from recomil.data.readers import SUFFIXES, Bag, patch_size_level0, read_bag
from recomil.data.wsi import SlideIndex, open_slide
from recomil.evaluation.explain import draw_on_slide, rare_mask, slide_title
from recomil.evaluation.overlay import ScaleView, write_slide_views
from recomil.inference import load_model, predict_members


def model_files(path: str | Path) -> list[Path]:
    """Checkpoints under a trained-model directory (every fold's model and ensemble members, whose
    predictions are averaged with equal weights), or the one file given."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("fold_*/best*.pt")) or sorted(path.glob("*.pt"))
    if not files:
        raise DataError(f"{path}: no trained model found (expected fold_<k>/best.pt)")
    return files


def find_slides(paths: list[str | Path], scale: str, named_only: bool = False) -> dict[str, Path]:
    """Slide id -> feature file at ``scale``, from files and folders (``named_only``: only files
    whose name says the scale, ``{slide}_{scale}_...``)."""
    found: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            index = FileIndex(p)
            entries = {sid: index.find(sid, scale, named_only) for sid in index.slide_ids(scale, named_only)}
        elif p.is_file():
            sid, sc = slide_key(p)
            if sc not in ((scale,) if named_only else (None, scale)):
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


@dataclass
class ScoredSlide:
    """One new slide after scoring: fold-averaged probabilities and attention, coordinates, patch size."""

    slide_id: str
    probs: np.ndarray
    attention: dict[str, np.ndarray]
    coords: dict[str, np.ndarray | None]
    patch_size: dict[str, float | None]
    rare: dict[str, np.ndarray] = field(default_factory=dict)


def score_slides(model_path: str | Path, features: list[str | Path], features_low: list[str | Path] | None,
                 patch_size: dict[str, float] | None = None) -> tuple[list[ScoredSlide], list[str]]:
    """Score every slide found in ``features`` (and ``features_low``) with the model(s) at ``model_path``.

    Args:
        patch_size: scale -> level-0 patch side for files whose attributes do not say (0 = unknown).

    Returns:
        The scored slides (sorted by id) and the class names.
    """
    files = model_files(model_path)
    models = [load_model(f) for f in files]
    _, p, classes = models[0]
    scales = p.scales
    sources = {"high": find_slides(features, "high")}
    if not sources["high"]:
        raise DataError(f"no feature files found in {', '.join(map(str, features))} (expected "
                        f"{', '.join(SUFFIXES)} files)")
    if "low" in scales:
        # without --features-low only files named for the low scale count: a high-scale file must
        # never be fed to the low branch
        sources["low"] = find_slides(features_low, "low") if features_low else find_slides(features, "low", True)
        if not sources["low"]:
            raise DataError("the model is dual-scale but no low-scale feature files were found in "
                            f"{', '.join(map(str, features_low or features))}; give them with --features-low "
                            "(files named {slide}_low_... in --features also count)")
    ids = sorted(sources["high"])
    dtype = np.dtype(p.store_dtype)
    scored: list[ScoredSlide] = []
    for sid in ids:
        bag, crd, size = {}, {}, {}
        for scale in scales:
            path = sources[scale].get(sid)
            if path is None:
                raise DataError(f"slide {sid!r}: no {scale}-scale feature file (the model is dual-scale; "
                                f"give the low-scale files with --features-low)")
            b: Bag = read_bag(path)
            width = getattr(p, f"feat_dim_{scale}")
            if b.features.shape[0] == 0 or b.features.shape[1] != width:
                raise DataError(f"slide {sid!r} ({path}): features {list(b.features.shape)} do not fit the model "
                                f"(width {width} at the {scale} scale)")
            with np.errstate(over="ignore"):  # checked just below, with the slide named
                stored = b.features.astype(dtype)
            if not np.isfinite(stored).all():
                raise DataError(f"slide {sid!r} ({path}): NaN or Inf features (or values beyond the range of "
                                f"{dtype.name}, the store dtype the model was trained with)")
            bag[scale] = torch.from_numpy(stored.astype(np.float32))
            crd[scale] = b.coords
            size[scale] = patch_size_level0(b.attrs) or ((patch_size or {}).get(scale) or None)
        pr, extras = predict_members([m for m, _, _ in models], [bag])
        probs = pr[0]
        att = {s: extras[0][f"evidence_{s}"] for s in scales}  # what decides the slide (patch_evidence)
        if not np.isfinite(probs).all():
            raise DataError(f"slide {sid!r}: the model gave non-finite probabilities")
        rare = {s: rare_mask(models[0][0], s, bag[s]) for s in scales}
        scored.append(ScoredSlide(sid, probs, att, crd, size, rare))
    return scored, classes


def predict_slides(model_path: str | Path, features: list[str | Path], features_low: list[str | Path] | None,
                   topk: int = 0, slides_dir: str | Path | None = None, heatmaps_out: str | Path | None = None,
                   patch_size: dict[str, float] | None = None,
                   gallery_k: int = 12) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Per-slide probabilities (and optionally each slide's ``topk`` most attended patches).

    With ``slides_dir`` each slide's attention is also drawn over its whole-slide image under
    ``heatmaps_out`` (as ``recomil heatmap`` does for one slide).
    """
    scored, classes = score_slides(model_path, features, features_low, patch_size)
    out = pd.DataFrame({"slide_id": [s.slide_id for s in scored]})
    probs = np.stack([s.probs for s in scored])
    for c, name in enumerate(classes):
        out[f"prob_{name}"] = probs[:, c]
    out["pred"] = [classes[i] for i in probs.argmax(1)]
    top = None
    if topk > 0:
        rows = []
        for sc in scored:
            for scale, a in sc.attention.items():
                c = sc.coords[scale]
                for rank, i in enumerate(np.argsort(-a, kind="stable")[:topk], 1):
                    rows.append({"slide_id": sc.slide_id, "scale": scale, "rank": rank, "patch_index": int(i),
                                 "evidence": float(a[i]), "x": None if c is None else float(c[i, 0]),
                                 "y": None if c is None else float(c[i, 1])})
        top = pd.DataFrame(rows)
    if slides_dir:
        index = SlideIndex(slides_dir)
        for sc in scored:
            draw_on_slide(Path(heatmaps_out or "."), index, sc.slide_id, _views(sc),
                          slide_title(sc.slide_id, None, sc.probs, classes), gallery_k)
    return out, top


def _views(sc: ScoredSlide) -> dict[str, ScaleView]:
    views = {}
    for s, a in sc.attention.items():
        c = sc.coords[s]
        views[s] = ScaleView(np.full((len(a), 2), np.nan) if c is None else c, a, sc.patch_size[s], sc.rare[s])
    return views


def heatmap(model_path: str | Path, features: list[str | Path], features_low: list[str | Path] | None,
            slide: str | Path, out_dir: str | Path, patch_size: dict[str, float] | None = None,
            gallery_k: int = 12) -> list[Path]:
    """``recomil heatmap``: score one new slide and draw its attention over its whole-slide image."""
    scored, classes = score_slides(model_path, features, features_low, patch_size)
    slide = Path(slide)
    if len(scored) != 1:
        raise DataError(f"--features name {len(scored)} slides; recomil heatmap draws one (use recomil predict "
                        f"--slides-dir for many)")
    sc = scored[0]
    handle = open_slide(slide)
    try:
        return write_slide_views(Path(out_dir), handle, sc.slide_id, _views(sc),
                                 slide_title(sc.slide_id, None, sc.probs, classes), topk=gallery_k)
    finally:
        handle.close()
