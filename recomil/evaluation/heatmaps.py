"""Attention heatmaps on the slide's patch grid, for cohorts without whole-slide images.

Each patch is drawn at its coordinates: the grid step is the smallest positive gap between
distinct coordinates of the slide (the patch size at level 0), so cell ``(x // step, y // step)``
holds the patch. Low-magnification patches cover ``scale_factor`` x ``scale_factor`` high cells.
Memory is one ``uint8`` RGB image of the grid (a 400,000-patch slide is about a 700 x 700 grid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from recomil.evaluation.overlay import CMAP, rank_percentile


def colourise(values: np.ndarray) -> np.ndarray:
    """Map ``[...]`` values in ``[0, 1]`` to ``[..., 3]`` uint8 colours of the perceptual map ``CMAP``."""
    return (colormaps[CMAP](np.clip(values, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def grid_step(coords: np.ndarray) -> float:
    """Smallest positive spacing of the coordinates along either axis (the patch size)."""
    gaps = []
    for axis in (0, 1):
        u = np.unique(coords[:, axis])
        if len(u) > 1:
            gaps.append(np.diff(u).min())
    return float(min(gaps)) if gaps else 1.0


def attention_grid(coords: np.ndarray, values: np.ndarray, step: float, cell: int = 1,
                   origin: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise per-patch ``values`` ``[N]`` at ``coords`` ``[N, 2]`` into a ``[H, W]`` float grid.

    Cells without a patch are NaN. ``cell`` > 1 paints each patch over ``cell`` x ``cell`` cells.

    Returns:
        ``(grid, origin)`` where origin is the coordinate of cell (0, 0).
    """
    origin = coords.min(0) if origin is None else origin
    ij = np.floor((coords - origin) / step + 1e-6).astype(np.int64)
    h, w = int(ij[:, 1].max()) + cell, int(ij[:, 0].max()) + cell
    grid = np.full((h, w), np.nan, dtype=np.float32)
    for dy in range(cell):
        for dx in range(cell):
            grid[ij[:, 1] + dy, ij[:, 0] + dx] = values
    return grid, origin


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 image as PNG (Pillow)."""
    Image.fromarray(rgb).save(path)


def heatmap_image(grid: np.ndarray, scale_px: int = 4) -> np.ndarray:
    """Colour a grid by the rank of each value (so a few strong patches stay visible); NaN is white."""
    img = np.full(grid.shape + (3,), 255, dtype=np.uint8)
    mask = ~np.isnan(grid)
    if mask.any():
        img[mask] = colourise(rank_percentile(grid[mask]))
    return np.repeat(np.repeat(img, scale_px, 0), scale_px, 1)


def write_slide_heatmaps(out_dir: Path, slide_id: str, coords: dict[str, np.ndarray],
                         attention: dict[str, np.ndarray], scale_px: int = 4) -> list[Path]:
    """One PNG per scale: ``<slide>_<scale>.png``; low patches drawn over the high cells they cover."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    high = coords["high"]
    step = grid_step(high)
    origin = high.min(0)
    for scale, c in coords.items():
        if np.isnan(c).any():
            continue
        cell = 1 if scale == "high" else max(1, int(round(grid_step(c) / step)))
        grid, _ = attention_grid(c, attention[scale], step, cell=cell, origin=np.minimum(origin, c.min(0)))
        path = out_dir / f"{slide_id}_{scale}.png"
        write_png(path, heatmap_image(grid, scale_px))
        written.append(path)
    return written
