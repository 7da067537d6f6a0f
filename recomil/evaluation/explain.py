"""Per-slide explanations written by the evaluate stage: heatmaps, top-attended and rare patches,
prototype assignment histograms, and the cohort-level prototype usage."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recomil.data.errors import DataError
from recomil.data.wsi import SlideIndex, open_slide
from recomil.evaluation.heatmaps import write_slide_heatmaps
from recomil.evaluation.overlay import ScaleView, write_slide_views
from recomil.model.branch import ReCoBranch
from recomil.model.mil import MILClassifier
from recomil.model.rarity import rarity_gate
from recomil.model.similarity import best_similarity
from recomil.training.bags import BagSet


@torch.no_grad()
def rare_mask(model: MILClassifier, scale: str, x: torch.Tensor) -> np.ndarray:
    """The instances of ``x`` ``[N, D]`` (raw features) that the rarity gate of ``scale`` boosts
    in training, ``[N]`` bool; computed in the space the prototypes live in (standardised when
    the model standardises its input)."""
    branch = model.branches[scale]
    if not isinstance(branch, ReCoBranch):
        return np.zeros(x.shape[0], dtype=bool)
    if scale in model.input_norm:
        x = model.input_norm[scale](x)
    sp = branch.sp
    g = rarity_gate(best_similarity(x, branch.protos.detach(), sp.similarity_method), sp.outlier_top_p,
                    sp.outlier_alpha)
    return (g > 1).numpy()


@torch.no_grad()
def write_explanations(out_dir: Path, model: MILClassifier, bags: BagSet, extras: list[dict[str, np.ndarray]],
                       topk: int = 20, fold: int = 0, slides: SlideIndex | None = None,
                       probs: np.ndarray | None = None, classes: list[str] | None = None,
                       gallery_k: int = 12) -> list[Path]:
    """Write heatmaps (slides with coordinates) and the patch tables under ``out_dir``.

    With ``slides`` (the ``slides_dir`` index) each slide also gets its attention drawn over the
    whole-slide image and a gallery of its top patches under ``out_dir/slides``
    (:mod:`recomil.evaluation.overlay`); a slide without an image file gets one warning.

    Returns:
        The PNG paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    top_rows, rare_rows, usage_rows, pngs = [], [], [], []
    store = bags.store
    for j, sid in enumerate(bags.slide_ids):
        i = bags.positions[j]
        feats = bags.bag(j)
        coords = {s: np.asarray(store.coords(i, s)) for s in bags.scales}
        att = {s: extras[j][f"evidence_{s}"] for s in bags.scales}  # what decides the slide (patch_evidence)
        attn = {s: extras[j][f"attention_{s}"] for s in bags.scales}
        rare_masks = {s: rare_mask(model, s, feats[s]) for s in bags.scales}
        for scale in bags.scales:
            c = coords[scale]
            order = np.argsort(-att[scale], kind="stable")[:topk]
            top_rows += [{"fold": fold, "slide_id": sid, "scale": scale, "rank": r, "patch_index": int(k),
                          "evidence": float(att[scale][k]), "attention": float(attn[scale][k]),
                          "x": float(c[k, 0]), "y": float(c[k, 1])}
                         for r, k in enumerate(order, 1)]
            rare = np.flatnonzero(rare_masks[scale])
            rare_rows += [{"fold": fold, "slide_id": sid, "scale": scale, "patch_index": int(k),
                           "evidence": float(att[scale][k]), "attention": float(attn[scale][k]),
                           "x": float(c[k, 0]), "y": float(c[k, 1])}
                          for k in rare]
            key = f"assignment_{scale}"
            if key in extras[j]:
                counts = np.bincount(extras[j][key].astype(np.int64), minlength=model.branches[scale].sp.num_protos)
                usage_rows += [{"fold": fold, "slide_id": sid, "scale": scale, "prototype": k, "patches": int(n)}
                               for k, n in enumerate(counts) if n]
        if not any(np.isnan(coords[s]).any() for s in bags.scales):
            pngs += write_slide_heatmaps(out_dir / "heatmaps", sid, coords, att)
        if slides is not None:
            views = {s: ScaleView(coords[s], att[s], store.patch_size(i, s), rare_masks[s]) for s in bags.scales}
            title = slide_title(sid, None if classes is None else classes[int(bags.labels[j])],
                                None if probs is None else probs[j], classes)
            pngs += draw_on_slide(out_dir / "slides", slides, sid, views, title, gallery_k)
    _append(out_dir / "top_patches.csv", top_rows)
    _append(out_dir / "rare_patches.csv", rare_rows)
    _append(out_dir / "prototype_usage.csv", usage_rows)
    if (out_dir / "prototype_usage.csv").exists():
        usage = read_table(out_dir / "prototype_usage.csv")
        summary = usage.groupby(["scale", "prototype"], as_index=False).agg(
            patches=("patches", "sum"), slides=("slide_id", "nunique"))
        summary.to_csv(out_dir / "prototype_usage_summary.csv", index=False)
    return pngs


def slide_title(slide_id: str, label: str | None, probs: np.ndarray | None, classes: list[str] | None) -> str:
    """``slide · label · predicted class (p = probability)`` for a figure title."""
    parts = [slide_id]
    if label is not None:
        parts.append(f"label {label}")
    if probs is not None:
        k = int(np.argmax(probs))
        name = classes[k] if classes else str(k)
        parts.append(f"predicted {name} (p = {float(probs[k]):.2f})")
    return " · ".join(parts)


def draw_on_slide(out_dir: Path, slides: SlideIndex, slide_id: str, views: dict[str, ScaleView], title: str,
                  gallery_k: int) -> list[Path]:
    """Overlay and gallery of one slide, or a warning naming it when its image is missing or unreadable."""
    path = slides.find(slide_id)
    if path is None:
        print(f"warning: slide {slide_id!r}: no whole-slide image under {slides.root}; no overlay drawn",
              file=sys.stderr)
        return []
    try:
        slide = open_slide(path)
    except DataError as exc:
        print(f"warning: {exc}; no overlay drawn", file=sys.stderr)
        return []
    try:
        return write_slide_views(out_dir, slide, slide_id, views, title, topk=gallery_k)
    finally:
        slide.close()


def read_table(path: Path) -> pd.DataFrame:
    """An explanation table written earlier, slide ids kept exactly as written (``0001`` stays
    ``0001``, ``NA`` stays ``NA``): text columns are read as text, only the known number columns as
    numbers."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in df.columns:
        if col not in _TEXT_COLUMNS:
            df[col] = pd.to_numeric(df[col].mask(df[col] == ""))
    return df


_TEXT_COLUMNS = {"slide_id", "scale", "label", "predicted", "class"}


def _append(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    df = pd.DataFrame(rows)
    if path.exists():
        df = pd.concat([read_table(path), df])
    df.to_csv(path, index=False)
