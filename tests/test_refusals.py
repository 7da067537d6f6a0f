"""Bad parameters, files and models get one clear error (#17 items 3, 10, 11)."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest

from recomil.cli import main as recomil
from recomil.config import ConfigError, make_params
from recomil.data.errors import DataError
from recomil.data.readers import read_bag
from recomil.pipeline import train_stage
from recomil.split import make_splits
from tests.conftest import prepare_demo


@pytest.mark.parametrize("key,value,match", [
    ("patience", 0, "patience"), ("outlier_top_p_high", 1.5, "outlier_top_p_high"),
    ("outlier_top_p_low", -0.1, "outlier_top_p_low"), ("route_topk_high", 200, "route_topk_high"),
    ("seed", -1, "seed"), ("seed", 2**40, "seed"), ("patch_size_level0", -5, "patch_size_level0"),
])
def test_parameter_checks_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        make_params({key: value})


def _manifest(counts: dict[str, int]) -> pd.DataFrame:
    rows = []
    for c, (label, n) in enumerate(counts.items()):
        rows += [{"slide_id": f"{label}{i}", "label": label, "label_index": c, "split": "", "patient_id": f"{label}{i}"}
                 for i in range(n)]
    return pd.DataFrame(rows)


def test_split_sizes_are_checked_per_class_with_the_param_named():
    m = _manifest({"normal": 20, "tumor": 3})
    with pytest.raises(DataError, match=r"class 'tumor' has 3 patient\(s\), too few for param 'folds' = 5"):
        make_splits(m, make_params({"folds": 5}))
    with pytest.raises(DataError, match=r"class 'tumor' has 3 patient\(s\), too few for param 'test_split'"):
        make_splits(m, make_params({"test_split": 0.2}))
    with pytest.raises(DataError, match="test_split' is 0"):
        make_splits(m, make_params({"test_split": 0.0}))
    assert len(make_splits(m, make_params({"folds": 3}))) == 3


def test_h5_with_a_group_or_complex_features_is_one_clear_error(tmp_path):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("features").create_dataset("x", data=np.ones((3, 4)))
    with pytest.raises(DataError, match="'features' is a Group"):
        read_bag(tmp_path / "g.h5")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("features", data=np.ones((3, 4)) * (1 + 2j))
    with pytest.raises(DataError, match="complex-valued"):
        read_bag(tmp_path / "c.h5")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


def test_a_malicious_or_corrupt_model_file_is_refused_without_running_it(project, capsys):
    (project / "evil.pt").write_bytes(pickle.dumps(_Evil()))
    (project / "junk.pt").write_bytes(b"\x00not a checkpoint")
    np.save(project / "s1.npy", np.ones((3, 4), np.float32))
    for model in ("evil.pt", "junk.pt"):
        assert recomil(["predict", "--model", model, "--features", "s1.npy", "--out", "p.csv"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: predict:") and model in err[0]
        assert "not a recomil model checkpoint" in err[0]
    assert not (project / "pwned.txt").exists() and not (project / "p.csv").exists()


def test_predict_with_a_dual_scale_model_refuses_to_guess_the_low_scale(project, tiny_params, capsys):
    prepare_demo(tiny_params)
    train_stage.run_train(tiny_params, progress=False)
    from recomil.data.readers import read_bag as rb

    feats = project / "new"
    feats.mkdir()
    for f in sorted((project / "data" / "demo" / "test").glob("*_high_feature_ctrans.pkl"))[:2]:
        np.save(feats / (f.name.split("_high_")[0] + ".npy"), rb(f).features)
    assert recomil(["predict", "--model", "models", "--features", str(feats), "--out", "p.csv"]) == 1
    err = capsys.readouterr().err
    assert "dual-scale" in err and "--features-low" in err
    assert not (project / "p.csv").exists()
    # with the low files named for their scale next to the high ones, it predicts
    for f in sorted((project / "data" / "demo" / "test").glob("*_low_feature_ctrans.pkl"))[:2]:
        np.save(feats / (f.name.split("_low_")[0] + "_low_feature.npy"), rb(f).features)
    assert recomil(["predict", "--model", "models", "--features", str(feats), "--out", "p.csv"]) == 0
    assert len(pd.read_csv(project / "p.csv")) == 2
    # features beyond the float16 store the model was trained with: refused, never a NaN prediction
    first = sorted(feats.glob("*_low_feature.npy"))[0]
    x = np.load(first)
    x[0, 0] = 1e6
    np.save(first, x)
    capsys.readouterr()
    assert recomil(["predict", "--model", "models", "--features", str(feats), "--out", "n.csv"]) == 1
    err = capsys.readouterr().err
    assert "beyond the range of float16" in err and first.name.split("_low_")[0] in err
    assert not (project / "n.csv").exists()
