"""Inputs that used to be read wrongly without a word (#17): each now reads right or fails clearly."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from recomil.config import make_params
from recomil.data.errors import DataError
from recomil.data.ingest import ingest
from recomil.data.store import FeatureStore


def _folder(tmp_path, labels: dict[str, str], n: int = 3, d: int = 4, value: float = 1.0):
    root = tmp_path / "feats"
    root.mkdir(exist_ok=True)
    for i, sid in enumerate(labels):
        np.save(root / f"{sid}.npy", np.full((n, d), value * (i + 1), np.float32))
    pd.DataFrame({"slide_id": list(labels), "label": list(labels.values())}).to_csv(tmp_path / "l.csv", index=False)
    return {"dataset": "folder", "root_dir_high": str(root), "labels_csv": str(tmp_path / "l.csv")}


def _fails(tmp_path, params, match):
    with pytest.raises(DataError, match=match):
        ingest(make_params(params), tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.glob(".store.tmp-*"))


def test_numeric_label_spellings_are_one_class(tmp_path):
    p = _folder(tmp_path, {"a": "1", "b": "1.0", "c": " 1", "d": "0", "e": "0.0"})
    ingest(make_params(p), tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    assert store.classes == ["0", "1"]
    assert list(store.labels) == [1, 1, 1, 0, 0]


def test_a_misspelt_text_label_is_a_class_too_small_to_train(tmp_path):
    p = _folder(tmp_path, {"a": "tumor", "b": "tumor", "c": "tumour", "d": "normal", "e": "normal"})
    _fails(tmp_path, p, r"class 'tumour' has only 1 slide \(c\).*misspelt")


def test_a_one_class_cohort_is_refused(tmp_path):
    p = _folder(tmp_path, {"a": "1", "b": "1", "c": "1.0"})
    _fails(tmp_path, p, r"every slide has the label '1'.*at least two classes")


def test_features_beyond_float16_are_refused_naming_slide_and_value(tmp_path):
    p = _folder(tmp_path, {"a": "0", "b": "1", "c": "0", "d": "1"})
    big = np.ones((3, 4), np.float32)
    big[1, 2] = 1e6
    np.save(tmp_path / "feats" / "c.npy", big)
    _fails(tmp_path, p, r"slide 'c': feature value 1e\+06 \(patch 1, high scale\).*store_dtype: float32")
    ingest(make_params({**p, "store_dtype": "float32"}), tmp_path / "store", progress=False)
    assert FeatureStore(tmp_path / "store").features(2, "high").max() == 1e6


def test_a_killed_ingest_leaves_no_temporary_store_behind_for_ever(tmp_path, capsys):
    p = _folder(tmp_path, {"a": "0", "b": "1", "c": "0", "d": "1"})
    stale = tmp_path / ".store.tmp-abc123"
    stale.mkdir()
    (stale / "high.features.bin").write_bytes(b"x" * 100)
    ingest(make_params(p), tmp_path / "store", progress=False)
    assert not stale.exists() and "left behind by an interrupted run" in capsys.readouterr().err


def test_symlinked_subfolders_are_followed_and_loops_do_not_hang(tmp_path):
    site_a, site_b = tmp_path / "site_a", tmp_path / "site_b"
    for site, ids in ((site_a, "ab"), (site_b, "cd")):
        site.mkdir()
        for sid in ids:
            np.save(site / f"{sid}.npy", np.ones((3, 4), np.float32))
    root = tmp_path / "features"
    root.mkdir()
    os.symlink(site_a, root / "site_a")
    os.symlink(site_b, root / "site_b")
    os.symlink(root, site_a / "loop")  # a link back up
    pd.DataFrame({"slide_id": list("abcd"), "label": list("0101")}).to_csv(tmp_path / "l.csv", index=False)
    p = make_params({"dataset": "folder", "root_dir_high": str(root), "labels_csv": str(tmp_path / "l.csv")})
    assert ingest(p, tmp_path / "store", progress=False)["slides"] == 4


def _pkl(path, n=3, d=4, v=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [{"feature": np.full(d, v, np.float32), "coords": np.array([i * 256, 0])} for i in range(n)]
    path.write_bytes(pickle.dumps(items))


def test_c16_root_with_symlinked_train_test_and_other_exports_reads_its_layout_only(tmp_path):
    """A C16 root whose train/ and test/ are links, beside npy exports of the same slides."""
    real = tmp_path / "real"
    for sid, sub in (("tumor_1", "train/tumor"), ("tumor_2", "train/tumor"), ("normal_1", "train/normal"),
                     ("normal_2", "train/normal"), ("t1", "test"), ("t2", "test")):
        for scale in ("high", "low"):
            _pkl(real / sub / f"{sid}_{scale}_feature_ctrans.pkl")
    root = tmp_path / "c16"
    root.mkdir()
    os.symlink(real / "train", root / "train")
    os.symlink(real / "test", root / "test")
    for sid in ("tumor_1", "t1"):
        for scale in ("high", "low"):
            (root / "npy" / scale).mkdir(parents=True, exist_ok=True)
            np.save(root / "npy" / scale / f"{sid}.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "test.csv").write_text("slide,label\nt1,tumor\nt2,normal\n")
    p = make_params({"dataset": "c16", "root_dir_high": str(root), "root_dir_low": str(root),
                     "test_csv": str(tmp_path / "test.csv")})
    summary = ingest(p, tmp_path / "store", progress=False)
    assert summary["slides"] == 6
    store = FeatureStore(tmp_path / "store")
    assert all(f.endswith("_feature_ctrans.pkl") for f in store.manifest["file_high"])
