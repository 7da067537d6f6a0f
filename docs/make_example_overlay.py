"""Re-create the README's example overlay: a model trained by the pipeline, its attention drawn
over a real H&E slide (``tests/data/slides/CMU-1-Small-Region.svs``, CC0).

A picture of the machinery, not of a diagnosis: there is one real slide and no real labels, so
the script makes a toy task from it.

1. Tile the slide into 128-px patches at 20x (high) and 256-px patches (low, read at 2x
   downsample), keeping tissue tiles; encode each with a fixed random projection of its pixels
   (a stand-in for CTransPath/UNI).
2. Call the 5 % of high tiles with the densest haematoxylin (dark purple nuclei) the "target".
   Make 48 training bags by sampling the slide's tiles: a positive bag holds a few target tiles,
   a negative bag none.
3. Run the pipeline's stages on them (``dataset: folder``, TRIDENT-style ``.h5`` files that carry
   ``patch_size_level0``), then ``recomil heatmap`` on the whole slide.

Usage: ``python docs/make_example_overlay.py`` (about a minute on a laptop CPU); writes
``docs/example_overlay.png`` and ``docs/example_gallery.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SLIDE = HERE.parent / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"
DIM = 64


def tiles(slide, size: int, read_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 top-left corners of tissue tiles of side ``size`` and their pixels at ``read_px``."""
    w, h = slide.dimensions
    coords, pix = [], []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            img = slide.read_patch(x, y, size, read_px)
            if (img.mean(-1) < 215).mean() > 0.3:  # tissue, not glass
                coords.append((x, y))
                pix.append(img)
    return np.array(coords, np.int64), np.stack(pix)


def encode(pix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fixed random-projection encoder: 16x16 RGB thumbnails of each tile -> DIM features."""
    small = np.stack([np.asarray(_resize(p, 16)) for p in pix]).reshape(len(pix), -1) / 255.0
    proj = rng.normal(size=(small.shape[1], DIM)) / np.sqrt(small.shape[1])
    return (small - small.mean(0)) @ proj


def _resize(p: np.ndarray, n: int):
    from PIL import Image

    return Image.fromarray(p).resize((n, n))


def nuclei_density(pix: np.ndarray) -> np.ndarray:
    """Share of dark, blue-purple pixels (haematoxylin-stained nuclei) in each tile."""
    r, g, b = (pix[..., i].astype(float) for i in range(3))
    return ((r + g + b < 330) & (b > g)).mean(axis=(1, 2))


def write_h5(path: Path, feats: np.ndarray, coords: np.ndarray, size: int) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats.astype(np.float32))
        c = f.create_dataset("coords", data=coords)
        c.attrs["patch_size_level0"] = size
        c.attrs["patch_size"] = size


def main() -> None:
    from recomil.cli import main as recomil
    from recomil.data.wsi import open_slide

    rng = np.random.default_rng(0)
    slide = open_slide(SLIDE)
    hc, hp = tiles(slide, 128, 64)
    lc, lp = tiles(slide, 256, 64)
    hf, lf = encode(hp, rng), encode(lp, rng)
    target = nuclei_density(hp) >= np.quantile(nuclei_density(hp), 0.95)
    # a low tile is "target" when it covers a target high tile
    l_target = np.array([((hc[target] >= c) & (hc[target] < c + 256)).all(1).any() for c in lc])
    work = Path(tempfile.mkdtemp(prefix="recomil-example-"))
    feats = work / "features"
    feats.mkdir()
    rows = []
    for i in range(48):
        pos = i % 2 == 0
        for scale, c, f, t in (("high", hc, hf, target), ("low", lc, lf, l_target)):
            keep = rng.random(len(c)) < 0.5
            keep &= ~t
            if pos:
                keep |= t & (rng.random(len(c)) < 0.4)
                if not (keep & t).any():
                    keep[rng.choice(np.flatnonzero(t))] = True
            write_h5(feats / f"bag{i:02d}_{scale}_feature.h5", f[keep], c[keep], 128 if scale == "high" else 256)
        rows.append({"slide_id": f"bag{i:02d}", "label": "target" if pos else "other"})
    pd.DataFrame(rows).to_csv(work / "labels.csv", index=False)
    whole = work / "slide"
    whole.mkdir()
    write_h5(whole / "CMU-1-Small-Region_high_feature.h5", hf, hc, 128)
    write_h5(whole / "CMU-1-Small-Region_low_feature.h5", lf, lc, 256)
    params = {"dataset": "folder", "root_dir_high": str(feats), "root_dir_low": str(feats),
              "labels_csv": str(work / "labels.csv"), "folds": 0, "test_split": 0.25, "num_protos_high": 16,
              "num_protos_low": 16, "embed_dim_high": 64, "embed_dim_low": 64, "epochs": 30, "warmup_epochs": 5,
              "freeze_protos_epochs": 5, "tau_epochs_high": 20, "tau_epochs_low": 20, "lr": 5e-4,
              "wandb_mode": "disabled", "bootstrap": 0}
    import yaml

    (work / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for stage in (["ingest"], ["split"], ["prototypes", "high"], ["prototypes", "low"], ["train"], ["evaluate"]):
            if recomil(["stage", *stage]) != 0:
                sys.exit(f"stage {stage} failed")
        metrics = json.loads(Path("results/metrics.json").read_text())
        out = work / "overlay"
        if recomil(["heatmap", "--model", "models", "--features", str(whole / "CMU-1-Small-Region_high_feature.h5"),
                    "--features-low", str(whole / "CMU-1-Small-Region_low_feature.h5"), "--slide", str(SLIDE),
                    "--out", str(out), "--topk", "12"]) != 0:
            sys.exit("recomil heatmap failed")
    finally:
        os.chdir(cwd)
    shutil.copy(out / "CMU-1-Small-Region_overlay.png", HERE / "example_overlay.png")
    shutil.copy(out / "CMU-1-Small-Region_gallery.png", HERE / "example_gallery.png")
    print(f"toy task test AUC {metrics['auc']}; wrote {HERE / 'example_overlay.png'} and "
          f"{HERE / 'example_gallery.png'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
