"""Prototype k-means: recomil's streaming mini-batch k-means vs scikit-learn's MiniBatchKMeans (and faiss).

Usage: python benchmarks/kmeans_vs_sklearn.py [--rows 500000] [--dim 768] [--seeds 1 2 3] [--out benchmarks/kmeans.md]

Data: demo-generator slides (tissue types, sites, tumour) at D = 768, written once to a raw
float32 file; a held-out set of further slides scores both results (mean squared distance to
the nearest centre). Settings: k = 128, batch 4096, max_iter 200, same seed. Each method runs in
its own subprocess (peak RSS is its own): scikit-learn needs the sample as an in-memory array;
recomil reads the memory-mapped file, with its default (`kmeans_algorithm: lloyd`) and with
`minibatch`; both include the counting pass over every row. faiss-cpu, when installed (`pip install faiss-cpu`), runs
with its own defaults (Lloyd iterations on 256 sampled points per centre) plus the assignment of
every row that the prototypes stage needs for its counts. Every method runs once per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
    elif method == "faiss":
        import faiss

        x = np.ascontiguousarray(data)
        km = faiss.Kmeans(x.shape[1], 128, niter=20, seed=seed)
        km.train(x)
        km.index.search(x, 1)  # nearest centre of every row: the counts the stage needs
        centres = km.centroids
    elif method == "recomil-minibatch":
        from recomil.prototypes.kmeans import minibatch_kmeans

        res = minibatch_kmeans(data, np.arange(len(data)), 128, batch_size=4096, max_iter=200, seed=seed)
        centres = res.centres
    else:  # the default of the prototypes stage (kmeans_algorithm: lloyd)
        from recomil.prototypes.kmeans import lloyd_kmeans

        res = lloyd_kmeans(data, np.arange(len(data)), 128, batch_size=4096, max_iter=200, seed=seed)
        centres = res.centres
    seconds = time.perf_counter() - t
    held = np.load(held_path, mmap_mode="r")
    return {"method": method, "seed": seed, "seconds": seconds,
            "heldout_inertia": _heldout_inertia(centres.astype(np.float64), held),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _methods() -> list[str]:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return ["sklearn", "recomil", "recomil-minibatch"]
    return ["sklearn", "recomil", "recomil-minibatch", "faiss"]


def run(rows_n: int, dim: int, seeds: list[int]) -> list[dict]:
    """Every method once per seed, each in its own subprocess; returns one dict per run."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        data, held = Path(tmp) / "x.npy", Path(tmp) / "held.npy"
        _make(data, rows_n, dim, 0)
        _make(held, 50_000, dim, 1)
        for seed in seeds:
            for method in _methods():
                res = subprocess.run([sys.executable, __file__, "--child", method, str(data), str(held), "--seed",
                                      str(seed)], capture_output=True, text=True, check=True)
                out.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(out[-1], flush=True)
    return out


def table(runs: list[dict], rows_n: int, dim: int) -> list[str]:
    """Markdown lines: mean +- std over seeds per method, speed-up and inertia ratio against scikit-learn."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    sk_t = float(np.mean([r["seconds"] for r in by["sklearn"]]))
    sk_i = float(np.mean([r["heldout_inertia"] for r in by["sklearn"]]))
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"{rows_n:,} x {dim} instances, k = 128, batch 4096, max_iter 200; seeds {seeds} "
             "(mean +- std over seeds).", "",
             "| method | wall time (s) | speed-up vs sklearn | held-out inertia | inertia / sklearn | peak RSS (MB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m, rs in by.items():
        t = np.array([r["seconds"] for r in rs])
        i = np.array([r["heldout_inertia"] for r in rs])
        lines.append(f"| {m} | {t.mean():.2f} +- {t.std():.2f} | {sk_t / t.mean():.2f}x "
                     f"| {i.mean():.2f} +- {i.std():.2f} | {i.mean() / sk_i:.5f} "
                     f"| {max(r['peak_mb'] for r in rs):.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", default="benchmarks/kmeans.md")
    ap.add_argument("--child", nargs=3, default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.child[2], args.seed)))
        return
    runs = run(args.rows, args.dim, args.seeds)
    lines = ["# Prototype k-means: recomil vs scikit-learn MiniBatchKMeans", "",
             f"Command: `python benchmarks/kmeans_vs_sklearn.py --rows {args.rows} --dim {args.dim}` "
             f"({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores).", ""] + table(runs, args.rows, args.dim)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
