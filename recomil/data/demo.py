"""A built-in Camelyon16-like demo cohort, written in the original's own pkl format.

Each slide is a blob of tissue on a patch grid (high magnification, 256 px patches at level 0).
Tissue types form spatial regions (a Voronoi partition), each with its own feature centre; an
acquisition site adds a slide-wide feature shift. A positive slide carries one contiguous tumour
region covering ``demo_tumour_min``..``demo_tumour_max`` of its patches (log-uniform), whose
patches form a rare cluster of their own close to one normal tissue type. Each
low-magnification patch summarises the 2x2 block of high patches it covers (their mean, plus
noise, seen through a fixed random rotation). Patches are written in random order: the spatial
structure lives only in ``coords``. Per-patch ground truth is kept for localisation metrics.

Layout (the original's C16 workflow)::

    train/tumor/{id}_{high,low}_feature_ctrans.pkl   train/normal/...   test/...
    train_list.txt   test_labels.csv (slide,label)   ground_truth/{id}_{high,low}.npy
"""

from __future__ import annotations

import math
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from recomil.config import Params

PATCH = 256


def _tissue_cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 2]`` integer grid cells of one roughly elliptical tissue blob."""
    aspect = rng.uniform(0.6, 1.6)
    side = int(math.ceil(math.sqrt(n * 2.0))) + 4
    ys, xs = np.mgrid[0:side, 0:side]
    cells = np.stack([xs.ravel(), ys.ravel()], 1)
    centre = np.array([side / 2, side / 2])
    d = ((cells[:, 0] - centre[0]) * aspect) ** 2 + ((cells[:, 1] - centre[1]) / aspect) ** 2
    d = d + rng.uniform(0, side * 0.8, size=d.shape)  # ragged border
    return cells[np.argsort(d)[:n]]


def _slide(rng: np.random.Generator, p: Params, centres: np.ndarray, tumour_centre: np.ndarray,
           site_shift: np.ndarray, low_rot: np.ndarray, positive: bool) -> dict[str, np.ndarray]:
    n = int(rng.integers(p.demo_min_patches, p.demo_max_patches + 1))
    cells = _tissue_cells(rng, n)
    # tissue types: Voronoi regions around a few seeds
    seeds = cells[rng.choice(n, size=min(n, int(rng.integers(4, 9))), replace=False)]
    seed_type = rng.integers(0, centres.shape[0], size=seeds.shape[0])
    region = np.argmin(((cells[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    tissue = seed_type[region]
    d = centres.shape[1]
    feats = centres[tissue] + rng.normal(0, 1.0, size=(n, d)) + site_shift
    tumour = np.zeros(n, dtype=bool)
    if positive:
        lo, hi = math.log(p.demo_tumour_min), math.log(p.demo_tumour_max)
        m = max(2, int(round(n * math.exp(rng.uniform(lo, hi)))))
        start = cells[rng.integers(n)]
        dist = ((cells - start) ** 2).sum(-1) + rng.uniform(0, 0.5, size=n)
        tumour[np.argsort(dist)[:m]] = True
        feats[tumour] = tumour_centre + site_shift + rng.normal(0, 1.0, size=(m, d))
    # low magnification: 2x2 blocks of high patches
    blocks = cells // 2
    keys, inverse = np.unique(blocks, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    low = np.zeros((keys.shape[0], d))
    np.add.at(low, inverse, feats)
    low = (low / counts[:, None] + rng.normal(0, 0.3, size=low.shape)) @ low_rot
    low_tumour = np.bincount(inverse, weights=tumour.astype(float)) > 0
    return {"high": feats.astype(np.float32), "high_coords": cells * PATCH, "high_gt": tumour,
            "low": low.astype(np.float32), "low_coords": keys * PATCH * 2, "low_gt": low_tumour}


def _write_pkl(path: Path, feats: np.ndarray, coords: np.ndarray) -> None:
    items = [{"feature": f, "coords": c.astype(np.int64)} for f, c in zip(feats, coords)]
    with open(path, "wb") as fh:
        pickle.dump(items, fh, protocol=4)


def make_demo(p: Params, out_dir: str | Path) -> dict[str, int]:
    """Write the demo cohort to ``out_dir`` (atomically); deterministic given ``demo_seed``.

    Returns:
        Counts: train/test slides, positives, patches per scale.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(p.demo_seed)
    d = p.demo_feat_dim
    centres = rng.normal(0, 1.0, size=(8, d)) * 1.5
    # tumour: a rare cluster of its own, 6 noise-SDs away from the nearest normal tissue type
    tumour_dir = rng.normal(0, 1.0, size=d)
    tumour_centre = centres[0] + tumour_dir * (6.0 / np.linalg.norm(tumour_dir))
    site_shifts = rng.normal(0, 0.3, size=(p.demo_sites, d))
    low_rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    stats = {"train": 0, "test": 0, "positive": 0, "patches_high": 0, "patches_low": 0}
    try:
        for sub in ("train/tumor", "train/normal", "test", "ground_truth"):
            (tmp / sub).mkdir(parents=True)
        train_ids, test_rows = [], []
        plan = [("train", i) for i in range(p.demo_train_slides)] + [("test", i) for i in range(p.demo_test_slides)]
        n_pos = {"train": round(0.4 * p.demo_train_slides), "test": round(0.4 * p.demo_test_slides)}
        for part, i in plan:
            positive = i < n_pos[part]
            if part == "train":
                sid = f"{'tumor' if positive else 'normal'}_{i + 1:03d}"
                folder = tmp / "train" / ("tumor" if positive else "normal")
                train_ids.append(sid)
            else:
                sid = f"test_{i + 1:03d}"
                folder = tmp / "test"
                test_rows.append((sid, 1 if positive else 0))
            site = int(rng.integers(p.demo_sites))
            s = _slide(rng, p, centres, tumour_centre, site_shifts[site], low_rot, positive)
            for scale in ("high", "low"):
                order = rng.permutation(s[scale].shape[0])
                _write_pkl(folder / f"{sid}_{scale}_feature_ctrans.pkl", s[scale][order], s[f"{scale}_coords"][order])
                np.save(tmp / "ground_truth" / f"{sid}_{scale}.npy", s[f"{scale}_gt"][order].astype(np.uint8))
                stats[f"patches_{scale}"] += int(s[scale].shape[0])
            stats[part] += 1
            stats["positive"] += int(positive)
        # shuffle the listing so that labels are not in blocks
        perm = rng.permutation(len(train_ids))
        (tmp / "train_list.txt").write_text("".join(f"{train_ids[j]}\n" for j in perm))
        (tmp / "test_labels.csv").write_text("slide,label\n" + "".join(f"{a},{b}\n" for a, b in test_rows))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return stats
