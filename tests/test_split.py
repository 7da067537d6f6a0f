"""Partitions: stratified, patient-grouped, leakage-free."""

import pandas as pd
import pytest

from recomil.config import make_params
from recomil.data.errors import DataError
from recomil.split import make_splits


def _manifest(n=40, split=None):
    return pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "label_index": [i % 2 for i in range(n)],
                         "patient_id": [f"p{i // 3}" for i in range(n)],
                         "split": split or [""] * n})


@pytest.mark.parametrize("folds", [0, 3, 5])
def test_no_patient_or_slide_crosses_partitions(folds):
    m = _manifest()
    patient = dict(zip(m.slide_id, m.patient_id))
    out = make_splits(m, make_params({"folds": folds, "val_split": 0.2}))
    assert len(out) == max(1, folds)
    tested = []
    for f in out:
        parts = [set(f[k]) for k in ("train", "val", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        pats = [{patient[s] for s in part} for part in parts]
        assert not (pats[0] & pats[1]) and not (pats[0] & pats[2]) and not (pats[1] & pats[2])
        assert len(f["val"]) > 0
        tested += f["test"]
    if folds:
        assert sorted(tested) == sorted(m.slide_id)


def test_own_test_split_is_used_and_no_val():
    m = _manifest(10, ["train"] * 7 + ["test"] * 3)
    m["patient_id"] = m["slide_id"]
    f = make_splits(m, make_params({"no_val": True}))[0]
    assert f["test"] == ["s7", "s8", "s9"] and f["val"] == [] and len(f["train"]) == 7


def test_patient_in_both_own_splits_is_an_error():
    m = _manifest(6, ["train", "train", "test", "train", "test", "test"])
    with pytest.raises(DataError, match="patient 'p0'"):
        make_splits(m, make_params({}))


def test_stratified_and_deterministic():
    m = _manifest(100)
    a = make_splits(m, make_params({"folds": 5}))
    assert a == make_splits(m, make_params({"folds": 5}))
    for f in a:
        labels = m.set_index("slide_id").loc[f["test"], "label_index"]
        assert 0.3 < labels.mean() < 0.7


def test_ensemble_members_hold_out_validation_patients_of_their_own():
    """``ensemble_val: resplit``: member m >= 1 re-draws ``val_split`` of the fold's training and
    validation patients (stratified, patient-grouped, from (seed, fold, m)); the test slides and the
    pool never change; member 0 and ``shared`` keep the split stage's partition."""
    from recomil.split import member_split

    m = _manifest(90)
    patient = dict(zip(m.slide_id, m.patient_id))
    label = dict(zip(m.slide_id, m.label_index))
    p = make_params({"folds": 3, "val_split": 0.2, "ensemble": 3})
    fold = make_splits(m, p)[1]
    assert member_split(m, fold, p, 1, 0) is fold
    assert member_split(m, fold, make_params({"folds": 3, "val_split": 0.2, "ensemble": 3,
                                              "ensemble_val": "shared"}), 1, 2) is fold
    members = [member_split(m, fold, p, 1, k) for k in (1, 2)]
    pool = set(fold["train"]) | set(fold["val"])
    for ms in members:
        assert ms["test"] == fold["test"]
        assert set(ms["train"]) | set(ms["val"]) == pool and not set(ms["train"]) & set(ms["val"])
        assert not {patient[s] for s in ms["train"]} & {patient[s] for s in ms["val"]}
        assert abs(len(ms["val"]) - len(fold["val"])) <= 3
        assert 0.25 < sum(label[s] for s in ms["val"]) / len(ms["val"]) < 0.75
        assert ms == member_split(m, fold, p, 1, members.index(ms) + 1)  # deterministic
    assert set(members[0]["val"]) != set(fold["val"]) and set(members[0]["val"]) != set(members[1]["val"])
    # another fold or seed draws other validation patients
    assert member_split(m, fold, p, 2, 1)["val"] != members[0]["val"]
    no_val = {**fold, "train": sorted(pool), "val": []}
    assert member_split(m, no_val, p, 1, 1) is no_val
