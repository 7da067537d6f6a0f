"""One epoch of I/O: reading every bag from the feature store versus parsing the original pkl files.

Usage: python benchmarks/store_io.py [--slides 60] [--patches 3000] [--dim 768] [--out benchmarks/store_io.md]

Writes a C16-layout cohort of dual-scale pkl files (demo generator, larger settings), ingests it
(timing the ingest: patches per second), then reads every bag once at both scales as float32
tensors, from the pkl files (restricted unpickler, as the original's loader parses them every
epoch) and from the memory-mapped store (as training does). The page cache is warm for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recomil.config import make_params
from recomil.data.demo import make_demo
from recomil.data.ingest import ingest
from recomil.data.presets import load_cohort
from recomil.data.readers import read_bag
from recomil.data.store import FeatureStore
from recomil.training.bags import BagSet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=60)
    ap.add_argument("--patches", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--out", default="benchmarks/store_io.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "c16"
        p = make_params({"demo_train_slides": args.slides, "demo_test_slides": 0, "demo_feat_dim": args.dim,
                         "demo_min_patches": args.patches // 2, "demo_max_patches": args.patches * 3 // 2})
        make_demo(p, root)
        q = dataclasses.replace(p, dataset="c16", root_dir_high=str(root), root_dir_low=str(root),
                                train_list=str(root / "train_list.txt"), test_csv=str(Path(tmp) / "t.csv"))
        (Path(tmp) / "t.csv").write_text("slide,label\n")
        t = time.perf_counter()
        summary = ingest(q, Path(tmp) / "store", progress=False)
        t_ingest = time.perf_counter() - t
        patches = sum(summary["instances"].values())
        cohort = load_cohort(q)
        t = time.perf_counter()
        for s in cohort.slides:
            for scale in ("high", "low"):
                torch.from_numpy(read_bag(s.files[scale]).features)
        t_pkl = time.perf_counter() - t
        store = FeatureStore(Path(tmp) / "store")
        bags = BagSet(store, store.slide_ids)
        t = time.perf_counter()
        for j in range(len(bags)):
            bags.bag(j)
        t_store = time.perf_counter() - t
        size_pkl = sum(f.stat().st_size for f in root.rglob("*.pkl")) / 2**20
        size_store = sum(f.stat().st_size for f in (Path(tmp) / "store").iterdir()) / 2**20
    lines = [
        "# Reading one epoch of bags: feature store vs original pkl files", "",
        f"Command: `python benchmarks/store_io.py --slides {args.slides} --patches {args.patches} --dim {args.dim}` "
        f"({time.strftime('%Y-%m-%d')}).", "",
        f"Cohort: {args.slides} dual-scale slides, {patches:,} patches in all, D = {args.dim}, store dtype "
        f"{p.store_dtype}.", "",
        "| reader | seconds per epoch | on disk (MB) |", "| --- | --- | --- |",
        f"| pkl files (restricted unpickler) | {t_pkl:.2f} | {size_pkl:.0f} |",
        f"| feature store (memory-mapped) | {t_store:.2f} | {size_store:.0f} |", "",
        f"Store / pkl speed-up: {t_pkl / t_store:.1f}x. Ingest: {t_ingest:.1f} s, "
        f"{patches / t_ingest:,.0f} patches per second.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.random.seed(0)
    main()
