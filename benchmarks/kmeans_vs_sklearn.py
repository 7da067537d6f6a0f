"""Prototype k-means: recomil's streaming mini-batch k-means vs scikit-learn's MiniBatchKMeans.

Usage: python benchmarks/kmeans_vs_sklearn.py [--rows 500000] [--dim 768] [--out benchmarks/kmeans.md]

Data: demo-generator slides (tissue types, sites, tumour) at D = 768, written once to a raw
float32 file; a held-out set of further slides scores both results (mean squared distance to
the nearest centre). Settings: k = 128, batch 4096, max_iter 200, same seed. Each method runs in
its own subprocess (peak RSS is its own): scikit-learn needs the sample as an in-memory array;
recomil reads the memory-mapped file.
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


def _make(path: Path, rows: int, dim: int, seed: int) -> None:
    from recomil.config import make_params
    from recomil.data.demo import _slide

    p = make_params({"demo_feat_dim": dim, "demo_min_patches": 1500, "demo_max_patches": 2500})
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, size=(8, dim)) * 1.5
    tumour = centres[0] + rng.normal(size=dim) * (6.0 / math.sqrt(dim))
    sites = rng.normal(0, 0.3, size=(3, dim))
    rot = np.eye(dim)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    filled = 0
    while filled < rows:
        s = _slide(rng, p, centres, tumour, sites[rng.integers(3)], rot, bool(rng.random() < 0.4))
        take = min(rows - filled, len(s["high"]))
        out[filled:filled + take] = s["high"][:take]
        filled += take
    out.flush()


def _heldout_inertia(centres: np.ndarray, held: np.ndarray) -> float:
    c_sq = (centres ** 2).sum(1)
    total = 0.0
    for i in range(0, len(held), 20000):
        x = np.asarray(held[i:i + 20000], dtype=np.float64)
        d = (x ** 2).sum(1, keepdims=True) + c_sq[None] - 2 * x @ centres.T
        total += d.min(1).clip(0).sum()
    return total / len(held)


def _child(method: str, data_path: str, held_path: str, seed: int) -> dict:
    data = np.load(data_path, mmap_mode="r")
    t = time.perf_counter()
    if method == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        x = np.array(data)  # scikit-learn needs the sample in memory
        km = MiniBatchKMeans(n_clusters=128, batch_size=4096, max_iter=200, random_state=seed).fit(x)
        centres = km.cluster_centers_
    else:
        from recomil.prototypes.kmeans import minibatch_kmeans

        res = minibatch_kmeans(data, np.arange(len(data)), 128, batch_size=4096, max_iter=200, seed=seed)
        centres = res.centres
    seconds = time.perf_counter() - t
    held = np.load(held_path, mmap_mode="r")
    return {"method": method, "seconds": seconds, "heldout_inertia": _heldout_inertia(centres.astype(np.float64), held),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--out", default="benchmarks/kmeans.md")
    ap.add_argument("--child", nargs=3, default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.child[2], args.seed)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data, held = Path(tmp) / "x.npy", Path(tmp) / "held.npy"
        _make(data, args.rows, args.dim, 0)
        _make(held, 50_000, args.dim, 1)
        rows = []
        for method in ("sklearn", "recomil"):
            res = subprocess.run([sys.executable, __file__, "--child", method, str(data), str(held), "--seed",
                                  str(args.seed)], capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    sk, ours = rows
    lines = ["# Prototype k-means: recomil vs scikit-learn MiniBatchKMeans", "",
             f"Command: `python benchmarks/kmeans_vs_sklearn.py --rows {args.rows} --dim {args.dim}` "
             f"({time.strftime('%Y-%m-%d')}); k = 128, batch 4096, max_iter 200, seed {args.seed}.", "",
             "| method | wall time (s) | held-out inertia | peak RSS (MB) |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['seconds']:.1f} | {r['heldout_inertia']:.2f} | {r['peak_mb']:.0f} |" for r in rows]
    lines += ["", f"Speed-up: {sk['seconds'] / ours['seconds']:.2f}x; held-out inertia ratio (recomil / sklearn): "
              f"{ours['heldout_inertia'] / sk['heldout_inertia']:.4f}."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
