"""The heatmap writer places each patch at its coordinates."""

import numpy as np
from PIL import Image

from recomil.evaluation.heatmaps import attention_grid, grid_step, heatmap_image, write_png, write_slide_heatmaps
from recomil.evaluation.localisation import localisation_auc


def _read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_patches_land_at_their_coordinates():
    # an L-shaped slide on a 256-px grid, shuffled; value = column index
    cells = np.array([(x, y) for y in range(5) for x in range(3)] + [(3, 4), (4, 4)])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(cells))
    coords = (cells[order] * 256 + 1000).astype(np.float32)
    values = cells[order, 0].astype(np.float32)
    assert grid_step(coords) == 256
    grid, origin = attention_grid(coords, values, 256)
    assert grid.shape == (5, 5) and tuple(origin) == (1000, 1000)
    for (x, y), v in zip(cells[order], values):
        assert grid[y, x] == v
    assert np.isnan(grid[0, 4]) and np.isnan(grid[3, 3])


def test_png_roundtrip_and_low_scale_cells(tmp_path):
    img = (np.arange(2 * 3 * 3) * 9).astype(np.uint8).reshape(2, 3, 3)
    write_png(tmp_path / "x.png", img)
    np.testing.assert_array_equal(_read_png(tmp_path / "x.png"), img)
    high = np.array([[x * 256, y * 256] for y in range(2) for x in range(4)], np.float32)
    low = np.array([[0, 0], [512, 0]], np.float32)
    paths = write_slide_heatmaps(tmp_path, "s", {"high": high, "low": low},
                                 {"high": np.arange(8) / 8, "low": np.array([1.0, 0.0])}, scale_px=1)
    hi, lo = (_read_png(p) for p in paths)
    assert hi.shape == (2, 4, 3) and lo.shape == (2, 4, 3)
    assert (lo[:, :2] == lo[0, 0]).all() and (lo[:, 2:] == lo[0, 2]).all()  # each low patch covers 2 x 2
    assert not (lo[0, 0] == lo[0, 2]).all()
    assert not (hi[0, 0] == hi[1, 1]).all()
    assert (heatmap_image(np.array([[np.nan]]), 1) == 255).all()


def test_localisation_auc_and_random_control():
    gt = np.zeros(100, bool)
    gt[:5] = True
    perfect = np.where(gt, 1.0, 0.0) + np.linspace(0, 0.1, 100)
    out = localisation_auc([perfect], [gt], seed=0)
    assert out["loc_auc"] == 1.0 and out["loc_slides"] == 1 and 0 < out["loc_auc_random"] < 1
    assert localisation_auc([perfect], [np.zeros(100, bool)], 0)["loc_auc"] is None
