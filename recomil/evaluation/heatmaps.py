"""Attention heatmaps on the slide's patch grid, written as PNG without a plotting library.

Each patch is drawn at its coordinates: the grid step is the smallest positive gap between
distinct coordinates of the slide (the patch size at level 0), so cell ``(x // step, y // step)``
holds the patch. Low-magnification patches cover ``scale_factor`` x ``scale_factor`` high cells.
Memory is one ``uint8`` RGB image of the grid (a 400,000-patch slide is about a 700 x 700 grid).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# a perceptually ordered colour ramp (dark blue -> teal -> yellow); background is white
_RAMP = np.array([[48, 18, 59], [40, 98, 200], [31, 158, 137], [109, 205, 89], [253, 231, 37]], dtype=np.float64)


def colourise(values: np.ndarray) -> np.ndarray:
    """Map ``[...]`` values in ``[0, 1]`` to ``[..., 3]`` uint8 colours."""
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


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
    """Write an ``[H, W, 3]`` uint8 image as PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def heatmap_image(grid: np.ndarray, scale_px: int = 4) -> np.ndarray:
    """Colour a grid by the rank of each value (so a few strong patches stay visible); NaN is white."""
    img = np.full(grid.shape + (3,), 255, dtype=np.uint8)
    mask = ~np.isnan(grid)
    if mask.any():
        uniq, inverse = np.unique(grid[mask], return_inverse=True)
        img[mask] = colourise(inverse.reshape(-1) / max(1, len(uniq) - 1))
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
