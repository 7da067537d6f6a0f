"""Attention over the whole-slide image: a real H&E slide (CMU-1-Small-Region.svs) and pyramidal
TIFFs made here, read through OpenSlide."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from matplotlib import colormaps
from PIL import Image

from recomil.data.errors import DataError
from recomil.data.readers import patch_size_level0, read_bag
from recomil.data.wsi import SlideIndex, open_slide
from recomil.evaluation.overlay import (
    ALPHA,
    CMAP,
    ScaleView,
    attention_raster,
    gallery_crops,
    geometry_problem,
    write_slide_views,
)

CMU = Path(__file__).parent / "data" / "slides" / "CMU-1-Small-Region.svs"
PS = 256


def _grid(cols: int, rows: int, x0: int = 256, y0: int = 256) -> np.ndarray:
    return np.array([(x0 + PS * i, y0 + PS * j) for j in range(rows) for i in range(cols)], np.float64)


def _expected_pixel(thumb_px, value01):
    colour = np.array(colormaps[CMAP](value01)[:3]) * 255
    return np.round((1 - ALPHA) * thumb_px.astype(float) + ALPHA * colour)


def test_known_attention_pattern_lands_on_the_right_pixels_of_a_real_slide(tmp_path):
    slide = open_slide(CMU)
    assert slide.dimensions == (2220, 2967)
    coords = _grid(6, 8)  # 6 x 8 patches of 256 px over the tissue
    rng = np.random.default_rng(0)
    order = rng.permutation(len(coords))
    coords = coords[order]
    att = np.full(len(coords), 0.001)
    hot = int(np.flatnonzero((coords[:, 0] == 256 + 3 * PS) & (coords[:, 1] == 256 + 5 * PS))[0])
    att[hot] = 0.5
    view = ScaleView(coords, att, float(PS), np.zeros(len(coords), bool))
    paths = write_slide_views(tmp_path, slide, "cmu", {"high": view}, "cmu · test", topk=3, max_px=740)
    names = {p.name for p in paths}
    assert {"cmu_high_overlay.png", "cmu_overlay.png", "cmu_gallery.png"} <= names
    thumb, ds = slide.thumbnail(740)
    overlay = np.asarray(Image.open(tmp_path / "cmu_high_overlay.png").convert("RGB"))
    assert overlay.shape == thumb.shape
    # centre of the hot patch: the top of the colour map (rank 1.0) blended over the tissue
    cx, cy = coords[hot] + PS / 2
    px, py = int(cx / ds), int(cy / ds)
    np.testing.assert_allclose(overlay[py, px], _expected_pixel(thumb[py, px], 1.0), atol=1)
    # centre of a cold patch: the bottom of the colour map
    cold = (hot + 1) % len(coords)
    qx, qy = ((coords[cold] + PS / 2) / ds).astype(int)
    np.testing.assert_allclose(overlay[qy, qx], _expected_pixel(thumb[qy, qx], 0.0), atol=1)
    # outside every patch the tissue shows unchanged
    np.testing.assert_array_equal(overlay[5, 5], thumb[5, 5])
    far = (int((256 + 7 * PS) / ds), int((256 + 9 * PS) / ds))
    np.testing.assert_array_equal(overlay[far[1], far[0]], thumb[far[1], far[0]])
    fig = Image.open(tmp_path / "cmu_overlay.png")
    assert fig.size[0] > 300 and fig.size[1] > 300
    slide.close()


def test_gallery_crops_equal_the_slide_pixels_at_full_resolution():
    slide = open_slide(CMU)
    coords = _grid(4, 3, x0=300, y0=900)
    att = np.linspace(0.1, 0.9, len(coords))
    rare = np.zeros(len(coords), bool)
    rare[0] = True
    crops = gallery_crops(slide, ScaleView(coords, att, float(PS), rare), k=2)
    assert [c.index for c in crops] == [len(coords) - 1, len(coords) - 2, 0]
    assert [c.rare for c in crops] == [False, False, True]
    raw = openslide.OpenSlide(str(CMU))
    for c in crops:
        ref = np.asarray(raw.read_region((int(c.x), int(c.y)), 0, (PS, PS)).convert("RGB"))
        assert c.pixels.shape == (PS, PS, 3)
        np.testing.assert_array_equal(c.pixels, ref)
        assert c.attention == att[c.index]


def _pyramid(path: Path, w: int = 3072, h: int = 2048, levels: int = 3) -> np.ndarray:
    base = np.full((h, w, 3), 235, np.uint8)
    base[400:1600, 600:2600] = (190, 90, 150)  # "tissue"
    img = base
    with tifffile.TiffWriter(path) as tw:
        for lvl in range(levels):
            tw.write(img, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=0 if lvl == 0 else 1)
            img = img[::2, ::2]
    return base


def test_pyramidal_slide_without_mpp_reads_its_thumbnail_from_a_lower_level(tmp_path):
    base = _pyramid(tmp_path / "pyr.tif")
    slide = open_slide(tmp_path / "pyr.tif")
    assert slide.handle.level_count == 3 and slide.handle.properties.get("openslide.mpp-x") is None
    thumb, ds = slide.thumbnail(600)
    assert thumb.shape[1] == 600 and ds == pytest.approx(3072 / 600)
    coords = _grid(5, 3, x0=768, y0=512)
    att = np.arange(len(coords), dtype=float)
    paths = write_slide_views(tmp_path / "out", slide, "pyr", {"high": ScaleView(coords, att, 256.0)}, "pyr",
                             max_px=600)
    overlay = np.asarray(Image.open(tmp_path / "out" / "pyr_high_overlay.png").convert("RGB"))
    top = int(np.argmax(att))
    x, y = ((coords[top] + 128) / ds).astype(int)
    np.testing.assert_allclose(overlay[y, x], _expected_pixel(thumb[y, x], 1.0), atol=1)
    assert any(p.name == "pyr_gallery.png" for p in paths)
    crop = gallery_crops(slide, ScaleView(coords, att, 256.0), k=1)[0]
    np.testing.assert_array_equal(crop.pixels, base[int(crop.y):int(crop.y) + 256, int(crop.x):int(crop.x) + 256])


def test_low_scale_patches_cover_their_larger_footprint():
    coords = np.array([[0, 0], [1024, 0]], float)
    r = attention_raster(coords, np.array([1.0, 0.0]), 1024.0, 256.0, (8, 16))
    assert (r[:4, :4] == 1.0).all() and (r[:4, 4:8] == 0.0).all() and np.isnan(r[:, 8:]).all()
    assert np.isnan(r[4:]).all()


def test_unknown_geometry_or_coordinates_outside_the_image_warn_and_draw_nothing(tmp_path, capsys):
    slide = open_slide(CMU)
    coords = _grid(2, 2)
    assert "patch size unknown" in geometry_problem("s1", coords, None, slide.dimensions)
    outside = coords + 5000
    msg = geometry_problem("s2", outside, 256.0, slide.dimensions)
    assert "s2" in msg and "2220 x 2967" in msg
    paths = write_slide_views(tmp_path, slide, "s2", {"high": ScaleView(outside, np.ones(4), 256.0)}, "t")
    assert paths == []
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "'s2'" in err


def test_slide_index_finds_slides_by_id_and_refuses_ambiguity(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "s1.svs").write_bytes(b"x")
    (tmp_path / "s2.ndpi").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    index = SlideIndex(tmp_path)
    assert index.find("s1") == tmp_path / "a" / "s1.svs" and index.find("s3") is None
    (tmp_path / "s1.tif").write_bytes(b"x")
    with pytest.raises(DataError, match="two slide files"):
        SlideIndex(tmp_path).find("s1")
    with pytest.raises(DataError, match="cannot read"):
        open_slide(tmp_path / "s2.ndpi")


# ------------------------------------------------------------------ patch geometry from feature files
def _h5(path: Path, attrs: dict, n: int = 6, d: int = 8) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.random.default_rng(0).normal(size=(n, d)).astype(np.float32))
        c = f.create_dataset("coords", data=_grid(3, 2)[:n].astype(np.int64))
        for k, v in attrs.items():
            c.attrs[k] = v


CLAM_ATTRS = {"downsample": np.array([2.0, 2.0]), "downsampled_level_dim": np.array([1110, 1483]),
              "level_dim": np.array([1110, 1483]), "name": "cmu", "patch_level": 1, "patch_size": 256,
              "save_path": "/data/patches"}
TRIDENT_ATTRS = {"patch_size": 256, "patch_size_level0": 512, "target_magnification": 10,
                 "level0_magnification": 20, "overlap": 0, "name": "cmu", "savetodir": "/x",
                 "level0_width": 2220, "level0_height": 2967}


@pytest.mark.parametrize("attrs,expected", [(CLAM_ATTRS, 512.0), (TRIDENT_ATTRS, 512.0),
                                            ({"patch_size": 224, "patch_level": 0}, 224.0), ({}, None)])
def test_clam_and_trident_h5_files_give_the_level0_patch_size(tmp_path, attrs, expected):
    _h5(tmp_path / "s.h5", attrs)
    bag = read_bag(tmp_path / "s.h5")  # array attributes (CLAM's downsample) are kept, not "corrupt"
    assert patch_size_level0(bag.attrs) == expected
    if "downsample" in attrs:
        assert bag.attrs["downsample"] == [2.0, 2.0]


def test_patch_size_travels_through_ingest_and_the_key_covers_files_without_attributes(project):
    from recomil.config import make_params
    from recomil.data.store import FeatureStore
    from recomil.pipeline.data_stages import run_ingest

    feats = project / "feats"
    feats.mkdir()
    _h5(feats / "a.h5", TRIDENT_ATTRS)
    _h5(feats / "b.h5", {})
    np.save(feats / "c.npy", np.ones((4, 8), np.float32))
    np.save(feats / "d.npy", np.ones((4, 8), np.float32))
    pd.DataFrame({"slide_id": list("abcd"), "label": ["x", "y", "x", "y"]}).to_csv(project / "labels.csv",
                                                                                    index=False)
    p = make_params({"dataset": "folder", "root_dir_high": str(feats), "labels_csv": str(project / "labels.csv")})
    run_ingest(p, progress=False)
    store = FeatureStore("data/store")
    assert [store.patch_size(store.position(s), "high") for s in "abc"] == [512.0, None, None]
    run_ingest(dataclasses.replace(p, patch_size_level0=224.0), progress=False)
    store = FeatureStore("data/store")
    assert [store.patch_size(store.position(s), "high") for s in "abc"] == [512.0, 224.0, 224.0]


def _cmu_features(folder: Path, d: int = 16) -> None:
    """High and low features for the CMU slide's tissue tiles, TRIDENT-style (with patch_size_level0)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for scale, size in (("high", 256), ("low", 512)):
        coords = _grid(8 if scale == "high" else 4, 11 if scale == "high" else 5, x0=0, y0=0) * (size // PS)
        with h5py.File(folder / f"CMU-1-Small-Region_{scale}_feature.h5", "w") as f:
            f.create_dataset("features", data=rng.normal(size=(len(coords), d)).astype(np.float32))
            c = f.create_dataset("coords", data=coords.astype(np.int64))
            c.attrs["patch_size_level0"] = size


@pytest.mark.slow  # ~18 s: a real slide drawn twice
def test_heatmap_and_predict_slides_dir_draw_new_slides(project, tiny_params, capsys):
    from recomil.cli import main as recomil
    from recomil.pipeline import train_stage
    from tests.conftest import prepare_demo

    prepare_demo(tiny_params)
    train_stage.run_train(tiny_params, progress=False)
    _cmu_features(project / "new")
    assert recomil(["heatmap", "--model", "models", "--features", str(project / "new"), "--slide", str(CMU),
                    "--out", "hm", "--topk", "4"]) == 0
    names = sorted(p.name for p in (project / "hm").iterdir())
    assert names == ["CMU-1-Small-Region_gallery.png", "CMU-1-Small-Region_high_overlay.png",
                     "CMU-1-Small-Region_low_overlay.png", "CMU-1-Small-Region_overlay.png"]
    slides = project / "wsi"
    slides.mkdir()
    (slides / "CMU-1-Small-Region.svs").symlink_to(CMU)
    assert recomil(["predict", "--model", "models", "--features", str(project / "new"), "--out", "out/p.csv",
                    "--slides-dir", str(slides)]) == 0
    assert (project / "out" / "p_slides" / "CMU-1-Small-Region_overlay.png").is_file()
    # a slide without an image is a warning naming it, not a failure
    assert recomil(["predict", "--model", "models", "--features", str(project / "new"), "--out", "q.csv",
                    "--slides-dir", str(project / "new")]) == 0
    assert "slide 'CMU-1-Small-Region': no whole-slide image" in capsys.readouterr().err


def test_evaluate_with_slides_dir_warns_per_slide_it_cannot_draw(project, tiny_params, capsys):
    from recomil.data.store import FeatureStore
    from recomil.pipeline import evaluate_stage, paths, train_stage
    from tests.conftest import prepare_demo

    p = dataclasses.replace(tiny_params, patch_size_level0=256.0, patch_size_level0_low=512.0)
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    plain = evaluate_stage.run_evaluate(p)
    slides = project / "wsi"
    slides.mkdir()
    test_ids = [s for s, sp in zip(FeatureStore(paths.STORE).slide_ids, FeatureStore(paths.STORE).manifest["split"])
                if sp == "test"]
    (slides / f"{test_ids[0]}.svs").symlink_to(CMU)  # the wrong slide: its patches lie outside the image
    capsys.readouterr()
    with_slides = evaluate_stage.run_evaluate(dataclasses.replace(p, slides_dir=str(slides)))
    err = capsys.readouterr().err
    assert with_slides == plain
    assert err.count("no whole-slide image under") == len(test_ids) - 1
    assert f"slide {test_ids[0]!r}: patch coordinates span" in err
