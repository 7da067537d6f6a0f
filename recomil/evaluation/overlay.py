"""Patch evidence drawn over the whole-slide image, and a gallery of the patches a pathologist would look at.

The evidence is what decides the slide (:func:`recomil.inference.patch_evidence`): the instance head's
patch probability under the instance stream (the default), otherwise the attention weight; the field
keeps its historical name ``attention``. For one slide and each scale: the slide's thumbnail (read
from its pyramid) with every patch's evidence painted over the tissue at the patch's true position and
size, coloured by its rank within the slide (a perceptual colour map, ``inferno``; the colour bar says
"patch evidence percentile"); and the top-k patches, plus the patches the rarity gate boosts, cut
from the slide at full resolution with their coordinates and evidence.

Geometry: ``coords`` are level-0 top-left corners and ``patch_size`` the level-0 side of a patch
(from the feature files' attributes or the ``patch_size_level0`` keys). A slide whose patches fall
outside its image, or whose patch size is unknown, gets one warning naming it and no picture.

Cost: one thumbnail of at most ``max_px`` pixels a side and a float raster of the same size; the
patches are painted with one vectorised assignment per pixel offset inside a patch, so a
100,000-patch slide takes well under a second beyond reading the thumbnail (benchmarks/heatmap.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from recomil.data.wsi import Slide  # noqa: E402

CMAP = "inferno"
ALPHA = 0.5


def rank_percentile(values: np.ndarray) -> np.ndarray:
    """``[N]`` values -> ``[N]`` in ``[0, 1]``: each value's rank within the slide (ties share one)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1) / max(1, len(uniq) - 1)


def geometry_problem(slide_id: str, coords: np.ndarray, patch_size: float | None,
                     dimensions: tuple[int, int]) -> str | None:
    """Why the patches cannot be drawn on this slide, or None when they can."""
    if patch_size is None or not np.isfinite(patch_size) or patch_size <= 0:
        return (f"slide {slide_id!r}: patch size unknown (no patch_size_level0 in its feature file's "
                f"attributes and param 'patch_size_level0' is 0); no overlay drawn")
    if coords.size == 0 or np.isnan(coords).any():
        return f"slide {slide_id!r}: its feature file has no patch coordinates; no overlay drawn"
    w, h = dimensions
    lo, hi = coords.min(0), coords.max(0) + patch_size
    if lo[0] < 0 or lo[1] < 0 or hi[0] > w + 1 or hi[1] > h + 1:
        return (f"slide {slide_id!r}: patch coordinates span x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f} "
                f"but the slide is {w} x {h} pixels (wrong slide, or coordinates not at level 0?); "
                f"no overlay drawn")
    return None


def attention_raster(coords: np.ndarray, values: np.ndarray, patch_size: float, downsample: float,
                     shape: tuple[int, int]) -> np.ndarray:
    """Paint each patch's value over its footprint on a ``[h, w]`` raster of the thumbnail.

    Args:
        coords: ``[N, 2]`` level-0 top-left corners; values: ``[N]``; patch_size: level-0 side;
        downsample: level-0 pixels per raster pixel; shape: ``(h, w)`` of the raster.

    Returns:
        ``[h, w]`` float32, NaN where no patch lies; where patches overlap, the larger value.
    """
    h, w = shape
    out = np.full((h, w), np.nan, dtype=np.float32)
    order = np.argsort(values, kind="stable")  # larger values painted last, so they win overlaps
    x0 = np.floor(coords[order, 0] / downsample).astype(np.int64)
    y0 = np.floor(coords[order, 1] / downsample).astype(np.int64)
    x1 = np.maximum(x0 + 1, np.ceil((coords[order, 0] + patch_size) / downsample).astype(np.int64))
    y1 = np.maximum(y0 + 1, np.ceil((coords[order, 1] + patch_size) / downsample).astype(np.int64))
    v = values[order].astype(np.float32)
    for dy in range(int((y1 - y0).max())):
        for dx in range(int((x1 - x0).max())):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy < y1) & (xx < x1) & (yy >= 0) & (xx >= 0) & (yy < h) & (xx < w)
            out[yy[ok], xx[ok]] = v[ok]
    return out


def blend(thumb: np.ndarray, raster: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``[h, w, 3]`` uint8: the thumbnail with ``raster`` (values in [0, 1], NaN = none) coloured
    by :data:`CMAP` and blended over it where patches lie; elsewhere the tissue shows unchanged."""
    out = thumb.astype(np.float32).copy()
    mask = ~np.isnan(raster)
    colours = colormaps[CMAP](raster[mask])[:, :3] * 255.0
    out[mask] = (1 - alpha) * out[mask] + alpha * colours
    return out.round().clip(0, 255).astype(np.uint8)


@dataclass
class ScaleView:
    """What to draw for one scale: ``coords`` ``[N, 2]``, ``attention`` ``[N]``, ``rare`` ``[N]`` bool."""

    coords: np.ndarray
    attention: np.ndarray
    patch_size: float | None
    rare: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass
class Crop:
    """One gallery patch: its index in the bag, level-0 ``(x, y)``, attention and ``[s, s, 3]`` pixels."""

    index: int
    x: float
    y: float
    attention: float
    pixels: np.ndarray
    rare: bool = False


def gallery_crops(slide: Slide, view: ScaleView, k: int) -> list[Crop]:
    """The ``k`` most attended patches, then up to ``k`` rarity-gated ones, read at full resolution."""
    order = np.argsort(-view.attention, kind="stable")[:k]
    rare = [i for i in np.flatnonzero(view.rare) if i not in set(order.tolist())][:k]
    crops = []
    for i, is_rare in [(int(i), False) for i in order] + [(int(i), True) for i in rare]:
        x, y = view.coords[i]
        crops.append(Crop(i, float(x), float(y), float(view.attention[i]),
                          slide.read_patch(x, y, view.patch_size or 1.0), is_rare))
    return crops


def write_slide_views(out_dir: Path, slide: Slide, slide_id: str, views: dict[str, ScaleView], title: str,
                      topk: int = 12, max_px: int = 2048) -> list[Path]:
    """Write ``<slide>_overlay.png`` (every drawable scale side by side, colour bar, title),
    ``<slide>_<scale>_overlay.png`` (the blended thumbnail alone, pixel-aligned with the slide) and
    ``<slide>_gallery.png`` (top patches of the finest drawable scale). Returns the paths written;
    a scale that cannot be drawn is skipped with one warning naming the slide."""
    out_dir.mkdir(parents=True, exist_ok=True)
    thumb, ds = slide.thumbnail(max_px)
    panels, written = [], []
    for scale, view in views.items():
        problem = geometry_problem(slide_id, view.coords, view.patch_size, slide.dimensions)
        if problem:
            print(f"warning: {problem} ({scale} scale, {slide.path})", file=sys.stderr)
            continue
        raster = attention_raster(view.coords, rank_percentile(view.attention), view.patch_size, ds,
                                  thumb.shape[:2])
        image = blend(thumb, raster)
        path = out_dir / f"{slide_id}_{scale}_overlay.png"
        Image.fromarray(image).save(path)
        written.append(path)
        panels.append((scale, image))
    if not panels:
        return written
    fig = Figure(figsize=(5.2 * len(panels) + 1.2, 5.2 * thumb.shape[0] / thumb.shape[1] + 0.8), dpi=110,
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (scale, image) in zip(axes, panels):
        ax.imshow(image)
        ax.set_title(f"{scale} magnification ({len(views[scale].attention):,} patches)", fontsize=9)
        ax.set_axis_off()
    bar = fig.colorbar(ScalarMappable(Normalize(0, 100), CMAP), ax=list(axes), fraction=0.03)
    bar.set_label("patch evidence percentile within the slide (100 = strongest)")
    fig.suptitle(title, fontsize=10)
    path = out_dir / f"{slide_id}_overlay.png"
    fig.savefig(path, bbox_inches="tight")
    written.append(path)
    scale = panels[0][0]
    crops = gallery_crops(slide, views[scale], topk)
    if crops:
        written.append(_write_gallery(out_dir / f"{slide_id}_gallery.png", crops, f"{title} — {scale} magnification"))
    return written


def _write_gallery(path: Path, crops: list[Crop], title: str, cols: int = 6) -> Path:
    rows = -(-len(crops) // cols)
    fig = Figure(figsize=(2.1 * cols, 2.4 * rows + 0.6), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    rank = 0
    for ax, c in zip(axes.ravel(), crops):
        ax.imshow(c.pixels)
        if c.rare:
            label = f"rarity gate\n({c.x:.0f}, {c.y:.0f}) ev {c.attention:.2e}"
        else:
            rank += 1
            label = f"#{rank} ({c.x:.0f}, {c.y:.0f})\nev {c.attention:.2e}"
        ax.set_title(label, fontsize=7, color="#a01010" if c.rare else "black")
    fig.suptitle(title + ": most attended patches" + (", then rarity-gated ones (red)" if any(c.rare for c in crops)
                                                       else ""), fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    return path
