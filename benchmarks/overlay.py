"""Cost of drawing a 100,000-patch slide's attention over its whole-slide image.

A pyramidal tiled TIFF of a large slide (level 0 ~71,000 px a side, 224-px patches, three
further levels at 4x steps, tissue as a filled ellipse) is written once with tifffile; then
``write_slide_views`` draws the overlay (thumbnail of at most 2,048 px from the pyramid) and the
12-patch gallery (read at level 0). Reported: seconds and peak resident memory of the drawing
alone, each in a fresh process.

Usage: python benchmarks/overlay.py [--patches 100000] [--out benchmarks/overlay.md]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PS = 224
TILE = 1024


def make_slide(path: Path, patches: int) -> tuple[np.ndarray, int]:
    """Write the slide; return the tissue patches' level-0 corners and the slide side."""
    import tifffile

    cols = int(math.ceil(math.sqrt(patches / (math.pi / 4))))  # the ellipse's box holds the patches
    side = (cols + 2) * PS
    side = int(math.ceil(side / TILE)) * TILE
    c = (np.arange(cols) + 1) * PS
    xx, yy = np.meshgrid(c, c)
    r = ((xx - side / 2) ** 2 + (yy - side / 2) ** 2) ** 0.5
    inside = r < side / 2 - 2 * PS
    coords = np.stack([xx[inside], yy[inside]], 1)[:patches].astype(np.float64)
    pink = np.zeros((TILE, TILE, 3), np.uint8) + np.array([214, 150, 190], np.uint8)
    glass = np.full((TILE, TILE, 3), 240, np.uint8)

    def tiles(n: int, step: int):
        for ty in range(n):
            for tx in range(n):
                cx, cy = (tx + 0.5) * TILE * step - side / 2, (ty + 0.5) * TILE * step - side / 2
                yield pink if (cx * cx + cy * cy) ** 0.5 < side / 2 - 2 * PS else glass

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        size, step = side, 1
        while size >= TILE:
            n = -(-size // TILE)
            tw.write(tiles(n, step), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="zlib", subfiletype=0 if step == 1 else 1)
            size //= 4
            step *= 4
    return coords, side


def child(slide_path: str, coords_path: str, out_dir: str) -> None:
    from recomil.data.wsi import open_slide
    from recomil.evaluation.overlay import ScaleView, write_slide_views

    coords = np.load(coords_path)
    rng = np.random.default_rng(0)
    att = rng.random(len(coords))
    rare = rng.random(len(coords)) < 0.015
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    slide = open_slide(slide_path)
    paths = write_slide_views(Path(out_dir), slide, "big", {"high": ScaleView(coords, att, float(PS), rare)},
                              "big · 100,000 patches", topk=12)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "before_mb": before, "files": [p.name for p in paths],
                      "dims": list(slide.dimensions), "levels": slide.handle.level_count}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=100_000)
    ap.add_argument("--out", default="benchmarks/overlay.md")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        coords, side = make_slide(tmp / "big.tif", args.patches)
        made = time.perf_counter() - t
        np.save(tmp / "coords.npy", coords)
        runs = []
        for _ in range(3):
            res = subprocess.run([sys.executable, __file__, "--child", str(tmp / "big.tif"), str(tmp / "coords.npy"),
                                  str(tmp / "out")], capture_output=True, text=True, check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    secs = sorted(r["seconds"] for r in runs)
    r = runs[0]
    lines = ["# Attention over a 100,000-patch whole-slide image", "",
             f"Command: `python benchmarks/overlay.py --patches {args.patches}` ({time.strftime('%Y-%m-%d')}, "
             "this 2-core machine, one process at a time).", "",
             f"A pyramidal tiled TIFF of {side:,} x {side:,} pixels ({r['levels']} levels, written in {made:.0f} s) "
             f"with {len(coords):,} patches of {PS} px on its tissue. `write_slide_views` (overlay from a "
             f"2,048-px thumbnail read from the pyramid, the figure with colour bar, the 12-patch gallery read "
             f"at level 0): median {secs[1]:.1f} s (min {secs[0]:.1f}, max {secs[2]:.1f}) over 3 fresh processes; "
             f"peak RSS {max(x['peak_mb'] for x in runs):.0f} MB, of which "
             f"{max(x['peak_mb'] - x['before_mb'] for x in runs):.0f} MB above the process before drawing "
             "(the imports of torch, matplotlib and OpenSlide make up the rest).", "",
             f"Files: {', '.join(r['files'])}."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
