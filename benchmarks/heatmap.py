"""Heatmap of a 400,000-patch slide (high) plus its 100,000 low patches: time and peak memory.

Usage: python benchmarks/heatmap.py [--patches 400000] [--out benchmarks/heatmap.md]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from recomil.evaluation.heatmaps import write_slide_heatmaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=400_000)
    ap.add_argument("--out", default="benchmarks/heatmap.md")
    args = ap.parse_args()
    side = int(np.ceil(np.sqrt(args.patches * 1.3)))
    rng = np.random.default_rng(0)
    cells = rng.choice(side * side, size=args.patches, replace=False)
    high = np.stack([cells % side, cells // side], 1).astype(np.float32) * 256
    low = np.unique(high // 512, axis=0) * 512
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_slide_heatmaps(Path(tmp), "big", {"high": high, "low": low},
                                     {"high": rng.random(len(high)), "low": rng.random(len(low))})
        size = sum(p.stat().st_size for p in paths) / 2**20
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = ["# Heatmap of a large slide", "",
             f"Command: `python benchmarks/heatmap.py --patches {args.patches}` ({time.strftime('%Y-%m-%d')}).", "",
             f"{args.patches:,} high patches on a {side} x {side} grid and {len(low):,} low patches: "
             f"{seconds:.1f} s for both PNGs ({size:.1f} MB), peak RSS {peak:.0f} MB "
             f"({peak - before:.0f} MB above the process before drawing)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
