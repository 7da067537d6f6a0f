"""Streaming k-means: determinism, leakage, errors, counts."""

import numpy as np
import pytest

from recomil.prototypes.kmeans import (
    StandardizedRows,
    _chunks,
    feature_stats,
    lloyd_kmeans,
    minibatch_kmeans,
    sample_rows,
)


def _lloyd(data, rows, k, *, batch_size=4096, max_iter=200, seed=0, count_rows=None):
    # a working set smaller than the rows, so the subsampled path is what is tested
    return lloyd_kmeans(data, rows, k, working_rows=max(k, len(rows) // 2), batch_size=batch_size,
                        max_iter=max_iter, seed=seed, count_rows=count_rows, chunk=97)


FITS = pytest.mark.parametrize("fit", [minibatch_kmeans, _lloyd], ids=["minibatch", "lloyd"])


def _blobs(n_per=200, k=5, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(k, d))
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, centres


@FITS
def test_same_seed_same_centres_and_counts_sum(fit):
    x, _ = _blobs()
    rows = np.arange(len(x))
    a = fit(x, rows, 5, batch_size=128, max_iter=20, seed=3)
    b = fit(x, rows, 5, batch_size=128, max_iter=20, seed=3)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert a.counts.sum() == len(x) and a.centres.dtype == np.float32


@FITS
def test_recovers_well_separated_clusters(fit):
    x, centres = _blobs()
    res = fit(x, np.arange(len(x)), 5, batch_size=256, max_iter=50, seed=0)
    dist = np.linalg.norm(res.centres[:, None] - centres[None], axis=-1)
    assert (dist.min(1) < 0.5).all()
    assert sorted(res.counts.tolist()) == [200] * 5


@FITS
def test_no_centre_lands_on_a_cluster_only_in_test_slides(fit):
    """Fit on training rows only: a planted cluster present only in test rows gets no centre."""
    x, _ = _blobs(k=4)
    planted = (np.random.default_rng(1).normal(size=(300, 8)) + 200.0).astype(np.float32)
    data = np.concatenate([x, planted])
    offsets = np.array([0, 400, 800, len(data)])  # bags 0, 1 train; bag 2 test
    sample, full = sample_rows(offsets, [0, 1], 1.0, 0, seed=0)
    res = fit(data, sample, 6, batch_size=128, max_iter=20, seed=0, count_rows=full)
    assert np.linalg.norm(res.centres - 200.0, axis=1).min() > 50
    assert res.counts.sum() == 800


def test_sampling_per_slide():
    offsets = np.array([0, 100, 110])
    sample, full = sample_rows(offsets, [0, 1], 0.5, 20, seed=0)
    assert len(full) == 110 and len(sample) == 20 + 5
    assert set(sample) <= set(full)


@FITS
def test_errors(fit):
    x, _ = _blobs(n_per=2, k=2)
    with pytest.raises(ValueError, match="no training instances"):
        fit(x, np.array([], dtype=np.int64), 2)
    with pytest.raises(ValueError, match="only 4 training instances"):
        fit(x, np.arange(4), 8)


@FITS
def test_empty_clusters_are_reseeded(fit):
    x = np.concatenate([np.zeros((50, 2)), np.ones((50, 2)) * 10]).astype(np.float32)
    x += np.random.default_rng(0).normal(0, 0.01, size=x.shape).astype(np.float32)
    res = fit(x, np.arange(100), 4, batch_size=32, max_iter=10, seed=0)
    assert (res.counts > 0).all()


def test_feature_stats_and_standardized_view():
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(1000, 4)).astype(np.float32)
    rows = np.arange(0, 1000, 2)
    mean, std = feature_stats(x, rows, chunk=77)
    np.testing.assert_allclose(mean, x[rows].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x[rows].std(0), rtol=1e-4)
    view = StandardizedRows(x, mean, std)
    z = view[rows]
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)


def test_chunk_reader_matches_fancy_indexing(tmp_path):
    """Contiguous runs, gaps and float16 memmaps all stream the same rows as ``data[rows]``."""
    x = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    data = np.load(tmp_path / "x.npy", mmap_mode="r")
    for rows in (np.arange(500), np.r_[3:40, 90:91, 200:450], np.random.default_rng(1).choice(500, 77, replace=False)):
        got = np.concatenate([t.numpy().copy() for _, t in _chunks(data, rows, 64)])
        np.testing.assert_array_equal(got, x[np.sort(rows)].astype(np.float32))


def test_lloyd_fits_a_working_set_and_counts_every_row():
    x, centres = _blobs(n_per=500, k=5)
    res = lloyd_kmeans(x, np.arange(len(x)), 5, working_rows=300, batch_size=64, seed=0)
    assert res.instances == len(x) and res.counts.sum() == len(x)
    dist = np.linalg.norm(res.centres[:, None] - centres[None], axis=-1)
    assert (dist.min(1) < 0.5).all()
    assert sorted(res.counts.tolist()) == [500] * 5
