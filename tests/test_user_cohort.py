"""A user's own cohort: headers however spelt, ids as written, full disks, output paths, duplicate
params keys, small studies (issue #32); each test pins one class of failure."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pandas as pd
import pytest

from recomil.cli import main as recomil
from recomil.cli import run_stage
from recomil.config import ConfigError, load_params, make_params
from recomil.data.errors import DataError
from recomil.data.ingest import ingest
from recomil.data.presets import load_cohort
from recomil.data.store import FeatureStore
from recomil.pipeline import evaluate_stage
from recomil.split import make_splits


def _cohort(tmp_path, ids, header="slide_id,label", extra=None, d=4):
    """Feature files ``<id>.npy`` under ``feats/`` and a label file with ``header``."""
    rng = np.random.default_rng(0)
    root = tmp_path / "feats"
    root.mkdir(exist_ok=True)
    rows = [header]
    for i, sid in enumerate(ids):
        np.save(root / f"{sid}.npy", rng.normal(size=(5, d)).astype(np.float32))
        rows.append(f"{sid},{i % 2}" + (f",{extra[i]}" if extra else ""))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"dataset": "folder", "root_dir_high": str(root), "labels_csv": str(tmp_path / "labels.csv")}


# ---- headers: every spelling of a known column is read; a look-alike is refused, never ignored
@pytest.mark.parametrize("header", ["Slide_ID,Label,Patient_ID", "SLIDE ID,LABEL,PATIENT-ID", "SlideID,Label,PatientID",
                                    "\ufeffslide_id,label,patient_id", " Slide_Id , label , patient id "])
def test_known_columns_are_read_however_they_are_capitalised(tmp_path, header):
    p = make_params(_cohort(tmp_path, [f"s{i}" for i in range(6)], header, extra=["p1", "p1", "p2", "p2", "p3", "p3"]))
    cohort = load_cohort(p)
    assert [s.patient_id for s in cohort.slides] == ["p1", "p1", "p2", "p2", "p3", "p3"]
    # three patients, three folds: no patient's slides on both sides of any fold
    manifest = pd.DataFrame({"slide_id": [s.slide_id for s in cohort.slides], "label": [s.label for s in cohort.slides],
                             "label_index": [int(s.label) for s in cohort.slides], "split": "",
                             "patient_id": [s.patient_id for s in cohort.slides]})
    for fold in make_splits(manifest, make_params({"folds": 3, "no_val": True})):
        pats = {m: set(manifest.set_index("slide_id").loc[fold[m], "patient_id"]) for m in ("train", "test")}
        assert not pats["train"] & pats["test"]


@pytest.mark.parametrize("header,column", [("slide_id,label,patient", "patient"),
                                           ("slide_id,label,Patient_No", "Patient_No"),
                                           ("slide_id,label,splits", "splits"), ("slide,label", "slide")])
def test_a_column_that_looks_like_a_known_one_is_refused_naming_it(tmp_path, header, column):
    p = make_params(_cohort(tmp_path, [f"s{i}" for i in range(4)], header, extra=["a"] * 4
                            if header.count(",") == 2 else None))
    with pytest.raises(DataError, match=f"column '{column}'"):
        load_cohort(p)


def test_two_spellings_of_one_column_are_refused_and_other_columns_are_reported(tmp_path, capsys):
    p = make_params(_cohort(tmp_path, [f"s{i}" for i in range(4)], "slide_id,label,Label", extra=["0"] * 4))
    with pytest.raises(DataError, match="'label' and 'Label' both name 'label'"):
        load_cohort(p)
    p = make_params(_cohort(tmp_path, [f"s{i}" for i in range(4)], "slide_id,label,notes", extra=["x"] * 4))
    load_cohort(p)
    assert "'notes' not read" in capsys.readouterr().err


# ---- ids: kept as written in every preset and output
ODD_IDS = ["0001", "0002", "NA", "1e5", "TCGA-AB-1234-01Z-00-DX1.00AB12CD", "nan"]


def test_slide_ids_round_trip_exactly_through_the_folder_preset_and_the_store(tmp_path):
    p = make_params(_cohort(tmp_path, ODD_IDS))
    ingest(p, tmp_path / "store", progress=False)
    assert FeatureStore(tmp_path / "store").slide_ids == ODD_IDS


def test_c16_keeps_a_dotted_barcode_and_strips_only_a_feature_file_ending(tmp_path):
    from recomil.data.demo import _write_pkl

    root = tmp_path / "c16"
    for sub in ("train/tumor", "train/normal", "test"):
        (root / sub).mkdir(parents=True)
    ids = {"train/tumor": ["TCGA-A1-0001-DX1.00AB12CD", "0007"], "train/normal": ["normal_0001", "TCGA-A1-0002-DX1.FF"],
           "test": ["0001.5", "test_002"]}
    for sub, names in ids.items():
        for sid in names:
            _write_pkl(root / sub / f"{sid}_high_feature_ctrans.pkl", np.ones((3, 4), np.float32), np.zeros((3, 2)))
    (root / "train_list.txt").write_text("TCGA-A1-0001-DX1.00AB12CD\n0007_high_feature_ctrans.pkl\nnormal_0001\n"
                                         "TCGA-A1-0002-DX1.FF\n")
    (root / "test.csv").write_text("slide,label\n0001.5,1\ntest_002,0\n")
    p = make_params({"dataset": "c16", "root_dir_high": str(root), "train_list": str(root / "train_list.txt"),
                     "test_csv": str(root / "test.csv")})
    got = [s.slide_id for s in load_cohort(p).slides]
    assert got == ["TCGA-A1-0001-DX1.00AB12CD", "0007", "normal_0001", "TCGA-A1-0002-DX1.FF", "0001.5", "test_002"]


def test_an_empty_slide_id_names_the_label_file_and_its_line(tmp_path):
    p = make_params(_cohort(tmp_path, [f"s{i}" for i in range(4)]))
    text = (tmp_path / "labels.csv").read_text().splitlines()
    text[3] = " ,0"
    (tmp_path / "labels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"labels\.csv, line 4: empty slide id"):
        load_cohort(p)


def test_explanation_tables_keep_ids_as_written_across_folds(tmp_path):
    from recomil.evaluation.explain import _append, read_table

    path = tmp_path / "top_patches.csv"
    _append(path, [{"fold": 0, "slide_id": "0001", "scale": "high", "rank": 1, "attention": 0.5, "x": np.nan}])
    _append(path, [{"fold": 1, "slide_id": "NA", "scale": "high", "rank": 1, "attention": 0.25, "x": 3.0}])
    df = read_table(path)
    assert df["slide_id"].tolist() == ["0001", "NA"] and np.isnan(df["x"].iloc[0]) and df["fold"].tolist() == [0, 1]


# ---- a full disk: the partial output is removed and the path named in one line
def test_a_full_disk_during_ingest_leaves_no_debris_and_names_the_store(tmp_path, monkeypatch, capsys):
    """The features file is opened on /dev/full, so its writes and the flush on closing fail with the
    kernel's own ENOSPC, as on a full filesystem."""
    if not __import__("os").path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    params = _cohort(tmp_path, [f"s{i}" for i in range(4)], d=2048)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    monkeypatch.chdir(tmp_path)
    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("high.features.bin"):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    assert run_stage("ingest") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data/store: no space left on the device" in err[0], err
    assert not list((tmp_path / "data").glob(".store.tmp-*")) and not (tmp_path / "data" / "store").exists()


# ---- predict and heatmap: outputs checked before the work, answers in the project's words
def test_predict_answers_before_scoring(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "outdir").mkdir()
    np.save(tmp_path / "s1.npy", np.ones((3, 4), np.float32))
    scored = []
    monkeypatch.setattr("recomil.evaluation.new_slides.predict_slides", lambda *a, **k: scored.append(1))
    assert recomil(["predict", "--model", "model.pt", "--features", "s1.npy", "--out", "outdir"]) == 1
    err = capsys.readouterr().err
    assert "outdir: --out names an existing folder" in err and not scored


def test_a_text_file_named_npy_is_refused_without_pickle_advice(tmp_path):
    from recomil.data.readers import read_bag

    (tmp_path / "s.npy").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError) as exc:
        read_bag(tmp_path / "s.npy")
    assert "s.npy" in str(exc.value) and "allow_pickle" not in str(exc.value)


def test_predict_on_an_empty_folder_says_there_are_no_features(tmp_path, monkeypatch):
    from recomil.evaluation import new_slides

    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(new_slides, "model_files", lambda path: ["m"])
    monkeypatch.setattr(new_slides, "load_model", lambda f: (None, make_params({}), ["a", "b"]))
    with pytest.raises(DataError, match="no feature files found in .*empty"):
        new_slides.score_slides("m", [tmp_path / "empty"], None)


def test_a_failed_heatmap_leaves_no_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "s1.npy", np.ones((3, 4), np.float32))
    (tmp_path / "m.pt").write_bytes(b"junk")
    assert recomil(["heatmap", "--model", "m.pt", "--features", "s1.npy", "--slide", "x.svs", "--out", "hm"]) == 1
    assert not (tmp_path / "hm").exists()
    assert "error: heatmap:" in capsys.readouterr().err


# ---- intervals: the per-fold ones follow the top-level rule
def test_degenerate_per_fold_intervals_are_null_like_the_top_level_one(capsys):
    metrics = {"auc": 1.0, "auc_ci_low": 0.9, "auc_ci_high": 1.0,
               "per_fold": [{"auc": 1.0, "auc_ci_low": 1.0, "auc_ci_high": 1.0},
                            {"auc": 0.5, "auc_ci_low": 0.0, "auc_ci_high": 0.0},
                            {"auc": 0.7, "auc_ci_low": 0.4, "auc_ci_high": 0.9}]}
    evaluate_stage.drop_degenerate_intervals(metrics)
    assert metrics["auc_ci_low"] == 0.9
    got = [(f["auc_ci_low"], f["auc_ci_high"]) for f in metrics["per_fold"]]
    assert got == [(None, None), (None, None), (0.4, 0.9)]
    assert "fold 0's auc" in capsys.readouterr().err


# ---- params.yaml: a key written twice is refused, naming it and its lines
def test_a_duplicate_params_key_is_refused_outside_dvc_too(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("seed: 1\nlr: 0.001\nepochs: 3\nlr: 0.01\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is written twice \(lines 2 and 4\)"):
        load_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert run_stage("check_params") == 1
    assert "'lr' is written twice" in capsys.readouterr().err and not (tmp_path / "data" / "params.ok").exists()


# ---- small studies: split, with a validation slide of each class, instead of scikit-learn's words
def test_a_sixteen_slide_study_splits_with_one_validation_slide_per_class(capsys):
    test = {6, 7, 14, 15}
    manifest = pd.DataFrame({"slide_id": [f"s{i:02d}" for i in range(16)], "label": ["a"] * 8 + ["b"] * 8,
                             "label_index": [0] * 8 + [1] * 8,
                             "split": ["test" if i in test else "" for i in range(16)],
                             "patient_id": [f"s{i:02d}" for i in range(16)]})
    (fold,) = make_splits(manifest, make_params({"val_split": 0.1}))
    val = manifest.set_index("slide_id").loc[fold["val"], "label_index"]
    assert sorted(val) == [0, 1]
    assert not set(fold["val"]) & set(fold["train"]) and not set(fold["test"]) & set(fold["train"])
    assert "too few for a stratified" in capsys.readouterr().err


def test_sixteen_slides_with_folds_and_default_validation_train_end_to_end_through_split(tmp_path, monkeypatch):
    params = _cohort(tmp_path, [f"s{i:02d}" for i in range(16)])
    (tmp_path / "params.yaml").write_text(json.dumps({**params, "folds": 2}))
    monkeypatch.chdir(tmp_path)
    assert run_stage("ingest") == 0 and run_stage("split") == 0
    folds = json.loads((tmp_path / "data" / "split.json").read_text())["folds"]
    assert all(len(f["val"]) >= 2 for f in folds)


