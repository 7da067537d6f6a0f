"""Every feature format, the restricted unpickler, and corrupt files."""

import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from recomil.data.errors import DataError
from recomil.data.readers import read_bag


def _feats(n=5, d=4):
    return np.arange(n * d, dtype=np.float32).reshape(n, d)


def test_original_pkl_list_of_dicts_with_coords(tmp_path):
    f, c = _feats(), np.arange(10).reshape(5, 2)
    path = tmp_path / "s1_high_feature_ctrans.pkl"
    path.write_bytes(pickle.dumps([{"feature": f[i], "coords": c[i]} for i in range(5)]))
    bag = read_bag(path)
    np.testing.assert_array_equal(bag.features, f)
    np.testing.assert_array_equal(bag.coords, c)


def test_pkl_without_coords_and_plain_array(tmp_path):
    (tmp_path / "a.pkl").write_bytes(pickle.dumps([{"feature": row} for row in _feats()]))
    assert read_bag(tmp_path / "a.pkl").coords is None
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(_feats(), protocol=2))
    np.testing.assert_array_equal(read_bag(tmp_path / "b.pkl").features, _feats())


def test_malicious_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"feature": np.zeros(3), "x": Evil()}]))
    with pytest.raises(DataError, match="evil.pkl.*refused to load global"):
        read_bag(path)
    assert not marker.exists()


def test_npy(tmp_path):
    np.save(tmp_path / "s.npy", _feats())
    np.testing.assert_array_equal(read_bag(tmp_path / "s.npy").features, _feats())


def test_object_npy_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="o.npy"):
        read_bag(tmp_path / "o.npy")


def test_pt_tensor_and_dict(tmp_path):
    torch.save(torch.from_numpy(_feats()), tmp_path / "t.pt")
    np.testing.assert_array_equal(read_bag(tmp_path / "t.pt").features, _feats())
    torch.save({"feats": torch.from_numpy(_feats()), "coords": torch.zeros(5, 2)}, tmp_path / "d.pt")
    assert read_bag(tmp_path / "d.pt").coords.shape == (5, 2)


def test_pt_with_code_is_refused(tmp_path):
    import argparse

    torch.save({"features": torch.zeros(2, 2), "obj": argparse.Namespace(a=1)}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="bad.pt"):
        read_bag(tmp_path / "bad.pt")


@pytest.mark.parametrize("key", ["features", "feats"])
def test_h5_clam_trident_stamp(tmp_path, key):
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=_feats()[None] if key == "features" else _feats())
        ds = f.create_dataset("coords", data=np.arange(10).reshape(5, 2))
        ds.attrs["patch_size_level0"] = 512
    bag = read_bag(path)
    np.testing.assert_array_equal(bag.features, _feats())
    assert bag.coords.shape == (5, 2) and bag.attrs["patch_size_level0"] == 512


@pytest.mark.parametrize("name,content", [("t.pkl", b"\x80\x04\x95garbage"), ("t.npy", b"\x93NUMPY\x01\x00"),
                                          ("t.pt", b"PK\x03\x04broken"), ("t.h5", b"\x89HDF\r\n")])
def test_truncated_or_corrupt_files(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=name):
        read_bag(tmp_path / name)


def test_truncated_real_pickle(tmp_path):
    data = pickle.dumps([{"feature": row} for row in _feats()])
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.pkl"):
        read_bag(tmp_path / "cut.pkl")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported"):
        read_bag(tmp_path / "x.csv")
