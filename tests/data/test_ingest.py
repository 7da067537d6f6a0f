"""Presets, the feature store, and every bad input of the ingest stage."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from recomil.config import make_params
from recomil.data.errors import DataError
from recomil.data.ingest import ingest
from recomil.data.store import FeatureStore


def _folder(tmp_path: Path, n=6, d=4, low=False, labels=None, patients=None):
    rng = np.random.default_rng(0)
    root = tmp_path / "feats"
    root.mkdir()
    rows = ["slide_id,label" + (",patient_id" if patients else "")]
    for i in range(n):
        np.save(root / f"s{i}.npy", rng.normal(size=(5 + i, d)).astype(np.float32))
        lab = labels[i] if labels else i % 2
        rows.append(f"s{i},{lab}" + (f",{patients[i]}" if patients else ""))
    if low:
        lroot = tmp_path / "low"
        lroot.mkdir()
        for i in range(n):
            np.save(lroot / f"s{i}.npy", rng.normal(size=(2, d + 1)).astype(np.float32))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"dataset": "folder", "root_dir_high": str(root), "labels_csv": str(tmp_path / "labels.csv"),
            "root_dir_low": str(tmp_path / "low") if low else ""}


def test_folder_preset_single_scale_store_roundtrip(tmp_path):
    p = make_params(_folder(tmp_path))
    summary = ingest(p, tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    assert summary["slides"] == 6 and store.scales == ("high",) and store.classes == ["0", "1"]
    i = store.position("s3")
    np.testing.assert_allclose(store.features(i, "high"), np.load(tmp_path / "feats" / "s3.npy"), atol=1e-2)
    assert list(store.sizes("high")) == [5, 6, 7, 8, 9, 10]
    assert np.isnan(store.coords(i, "high")).all()


def test_folder_dual_scale_string_labels(tmp_path):
    p = make_params(_folder(tmp_path, low=True, labels=["a", "b", "c", "a", "b", "c"]))
    ingest(p, tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    assert store.scales == ("high", "low") and store.dims == {"high": 4, "low": 5}
    assert store.classes == ["a", "b", "c"]


def test_c16_layout_and_demo(tmp_path, tiny_params):
    from recomil.data.demo import make_demo

    make_demo(tiny_params, tmp_path / "c16")
    p = make_params({"dataset": "c16", "root_dir_high": str(tmp_path / "c16"), "root_dir_low": str(tmp_path / "c16"),
                     "train_list": str(tmp_path / "c16/train_list.txt"),
                     "test_csv": str(tmp_path / "c16/test_labels.csv")})
    ingest(p, tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    m = store.manifest
    assert len(m) == 20 and set(m["split"]) == {"train", "test"}
    assert all(m.loc[m.slide_id.str.startswith("tumor"), "label"] == "tumor")
    assert store.manifest["has_coords"].all()
    gt = np.load(tmp_path / "c16/ground_truth/test_001_high.npy")
    assert len(gt) == store.sizes("high")[store.position("test_001")]


def test_c17_and_tcga(tmp_path):
    root = tmp_path / "c17"
    root.mkdir()
    for i in range(4):
        (root / f"p{i}").mkdir()
        np.save(root / f"p{i}" / "features.npy", np.ones((3, 2), np.float32) * i)
    (tmp_path / "ids.txt").write_text("p0\np1\np2\np3\n")
    np.save(tmp_path / "labels.npy", np.array([0, 1, 0, 1]))
    p = make_params({"dataset": "c17", "root_dir_high": str(root), "ids_file": str(tmp_path / "ids.txt"),
                     "labels_npy": str(tmp_path / "labels.npy")})
    assert ingest(p, tmp_path / "s1", progress=False)["slides"] == 4
    for name in ("luad", "lusc"):
        (tmp_path / name).mkdir()
    for sid in "ac":
        np.save(tmp_path / "luad" / f"{sid}.npy", np.ones((2, 3), np.float32))
    for sid in "bd":
        np.save(tmp_path / "lusc" / f"{sid}.npy", np.ones((2, 3), np.float32))
    (tmp_path / "t.csv").write_text("slide_id,label\na,TCGA-LUAD\nb,TCGA-LUSC\nc,TCGA-LUAD\nd,1\n")
    p = make_params({"dataset": "tcga", "train_csv": str(tmp_path / "t.csv"), "luad_dir": str(tmp_path / "luad"),
                     "lusc_dir": str(tmp_path / "lusc")})
    ingest(p, tmp_path / "s2", progress=False)
    assert FeatureStore(tmp_path / "s2").classes == ["LUAD", "LUSC"]


def _expect_error(tmp_path, params, match):
    store = tmp_path / "store"
    with pytest.raises(DataError, match=match):
        ingest(make_params(params), store, progress=False)
    assert not store.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store.tmp")]


def test_missing_file(tmp_path):
    params = _folder(tmp_path)
    (tmp_path / "feats" / "s2.npy").unlink()
    _expect_error(tmp_path, params, "slide 's2'.*no high-scale feature file")


def test_width_differs(tmp_path):
    params = _folder(tmp_path)
    np.save(tmp_path / "feats" / "s4.npy", np.ones((3, 7), np.float32))
    _expect_error(tmp_path, params, "slide 's4'.*width 7 differs")


def test_feat_dim_param_checked(tmp_path):
    _expect_error(tmp_path, {**_folder(tmp_path), "feat_dim_high": 8}, "feat_dim_high is 8")


def test_nonfinite_error_and_drop(tmp_path):
    params = _folder(tmp_path)
    a = np.ones((4, 4), np.float32)
    a[1, 2] = np.nan
    a[3, 0] = np.inf
    np.save(tmp_path / "feats" / "s1.npy", a)
    _expect_error(tmp_path, params, "slide 's1'.*2 patch\\(es\\) with NaN or Inf")
    ingest(make_params({**params, "on_nonfinite": "drop"}), tmp_path / "store", progress=False)
    store = FeatureStore(tmp_path / "store")
    assert store.sizes("high")[store.position("s1")] == 2


def test_empty_bag(tmp_path):
    params = _folder(tmp_path)
    np.save(tmp_path / "feats" / "s0.npy", np.zeros((0, 4), np.float32))
    _expect_error(tmp_path, params, "slide 's0'.*empty bag")


def test_unknown_label_and_duplicate_and_bad_csv(tmp_path):
    params = _folder(tmp_path)
    (tmp_path / "labels.csv").write_text("slide_id,label\ns0,0\ns0,1\n")
    _expect_error(tmp_path, params, "slide 's0'.*duplicate")
    (tmp_path / "labels.csv").write_text("slide,lbl\ns0,0\n")
    _expect_error(tmp_path, params, "column 'slide' is not one labels_csv reads; did you mean 'slide_id'")
    (tmp_path / "labels.csv").write_text("name,diagnosis\ns0,0\n")
    _expect_error(tmp_path, params, "lacks column\\(s\\) slide_id, label")
    (tmp_path / "t.csv").write_text("slide,label\ns1,maybe\n")
    (tmp_path / "train.txt").write_text("")
    _expect_error(tmp_path, {"dataset": "c16", "root_dir_high": str(tmp_path / "feats"),
                             "train_list": str(tmp_path / "train.txt"), "test_csv": str(tmp_path / "t.csv")},
                  "slide 's1'.*unknown label value 'maybe'")


def test_dual_mode_slide_at_one_scale_only(tmp_path):
    params = _folder(tmp_path, low=True)
    (tmp_path / "low" / "s5.npy").unlink()
    _expect_error(tmp_path, params, "slide 's5'.*no low-scale feature file")


def test_corrupt_file_named(tmp_path):
    params = _folder(tmp_path)
    (tmp_path / "feats" / "s3.npy").write_bytes(b"\x93NUMPY junk")
    _expect_error(tmp_path, params, "s3.npy")


def test_failed_ingest_keeps_previous_store(tmp_path):
    params = _folder(tmp_path)
    ingest(make_params(params), tmp_path / "store", progress=False)
    (tmp_path / "feats" / "s2.npy").unlink()
    with pytest.raises(DataError):
        ingest(make_params(params), tmp_path / "store", progress=False)
    assert len(FeatureStore(tmp_path / "store")) == 6


def test_pickle_features_of_original_naming(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    for sid in ("a", "b", "c", "d"):
        for scale in ("high", "low"):
            items = [{"feature": np.ones(3, np.float32), "coords": np.array([i, 0])} for i in range(4)]
            (root / f"{sid}_{scale}_feature_ctrans.pkl").write_bytes(pickle.dumps(items))
    (tmp_path / "l.csv").write_text("slide_id,label\na,0\nb,1\nc,0\nd,1\n")
    p = make_params({"dataset": "folder", "root_dir_high": str(root), "root_dir_low": str(root),
                     "labels_csv": str(tmp_path / "l.csv")})
    ingest(p, tmp_path / "store", progress=False)
    assert FeatureStore(tmp_path / "store").manifest["has_coords"].all()
