"""Partition slides into train / validation / test, per fold, leakage-free.

Stratified by label and grouped by patient (``patient_id``; a slide is its own patient when
none is known), so no patient appears in two partitions of a fold.

* ``folds: 0``: the dataset's own test split (slides marked ``test``); a dataset without one
  holds out ``test_split`` of its patients.
* ``folds: K``: K stratified, patient-grouped folds; fold k tests on the k-th part.

Validation is ``val_split`` of each fold's training patients (none with ``no_val``).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from recomil.config import Params
from recomil.data.errors import DataError


def _hold_out(ids: np.ndarray, labels: np.ndarray, groups: np.ndarray, frac: float,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``ids`` into (rest, held) with about ``frac`` of the patients held, stratified."""
    n_groups = len(np.unique(groups))
    if frac <= 0 or n_groups < 2:
        return ids, ids[:0]
    n_splits = int(min(max(2, round(1.0 / frac)), n_groups))
    per_class = [len(np.unique(groups[labels == c])) for c in np.unique(labels)]
    if min(per_class) < n_splits:  # a fold of 1/n_splits would miss a class: hold out per class
        return _hold_out_per_class(ids, labels, groups, frac, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        rest_idx, held_idx = next(cv.split(ids, labels, groups))
    return ids[rest_idx], ids[held_idx]


def _hold_out_per_class(ids: np.ndarray, labels: np.ndarray, groups: np.ndarray, frac: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``max(1, round(frac * n_c))`` of each class's ``n_c`` patients (a patient counts in the
    class of most of its slides), at random from ``seed``; a class with one patient keeps it in
    training. For cohorts too small for a stratified 1/``frac`` partition: every class that can
    spare a patient gets at least one in the held-out part."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    cls = {g: np.bincount(labels[groups == g]).argmax() for g in patients}
    held: list[str] = []
    for c in np.unique(labels):
        mine = np.array([g for g in patients if cls[g] == c])
        if len(mine) < 2:
            continue
        take = min(len(mine) - 1, max(1, round(frac * len(mine))))
        held += rng.permutation(mine)[:take].tolist()
    mask = np.isin(groups, held)
    print(f"split: {len(patients)} patients are too few for a stratified {frac:g} share; held out "
          f"{len(held)} patient(s), at least one of each class that has two or more", file=sys.stderr)
    return ids[~mask], ids[mask]


def make_splits(manifest: pd.DataFrame, p: Params) -> list[dict[str, list[str]]]:
    """Return one ``{"train": [...], "val": [...], "test": [...]}`` of slide ids per fold."""
    ids = manifest["slide_id"].to_numpy(dtype=str)
    labels = manifest["label_index"].to_numpy()
    groups = manifest["patient_id"].to_numpy(dtype=str)
    splits = manifest["split"].fillna("").astype(str).str.lower().to_numpy()
    _check_patients(manifest)
    classes = (manifest.drop_duplicates("label_index").set_index("label_index")["label"].to_dict()
               if "label" in manifest.columns else {})
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if p.folds == 0:
        if (splits == "test").any():
            parts.append((np.flatnonzero(splits != "test"), np.flatnonzero(splits == "test")))
        else:
            if p.test_split <= 0:
                raise DataError("the dataset has no test split of its own and param 'test_split' is 0: nothing "
                                "would be tested; set test_split (e.g. 0.2) or folds (e.g. 5)")
            _need_per_class(labels, groups, max(2, round(1.0 / p.test_split)), classes, "test_split", p.test_split)
            rest, held = _hold_out(np.arange(len(ids)), labels, groups, p.test_split, p.seed)
            parts.append((rest, held))
    else:
        n_groups = len(np.unique(groups))
        if n_groups < p.folds:
            raise DataError(f"folds is {p.folds} but the cohort has only {n_groups} patients")
        _need_per_class(labels, groups, p.folds, classes, "folds", p.folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cv = StratifiedGroupKFold(n_splits=p.folds, shuffle=True, random_state=p.seed)
            parts.extend(cv.split(ids, labels, groups))
    folds = []
    for k, (train_idx, test_idx) in enumerate(parts):
        if p.no_val:
            fit_idx, val_idx = train_idx, train_idx[:0]
        else:
            fit_idx, val_idx = _hold_out(train_idx, labels[train_idx], groups[train_idx], p.val_split, p.seed + k)
        if len(fit_idx) == 0:
            raise DataError(f"fold {k}: no training slides")
        folds.append({"train": sorted(ids[fit_idx].tolist()), "val": sorted(ids[val_idx].tolist()),
                      "test": sorted(ids[test_idx].tolist())})
    return folds


def _need_per_class(labels: np.ndarray, groups: np.ndarray, parts: int, classes: dict[int, str], key: str,
                    value: float) -> None:
    """Each class must have at least ``parts`` patients, or some part would lack it: say which
    class and which param, instead of scikit-learn's "n_splits=... cannot be greater than ..."."""
    for c in np.unique(labels):
        n = len(np.unique(groups[labels == c]))
        if n < parts:
            raise DataError(f"class {classes.get(int(c), c)!r} has {n} patient(s), too few for param {key!r} = "
                            f"{value} (it needs {parts} per class); lower {key} or add slides of that class")


def _check_patients(manifest: pd.DataFrame) -> None:
    """A patient whose slides the dataset puts in both its train and its test split is an error."""
    own = manifest[manifest["split"].isin(["train", "test"])]
    mixed = own.groupby("patient_id")["split"].nunique()
    bad = mixed[mixed > 1]
    if len(bad):
        raise DataError(f"patient {bad.index[0]!r} has slides in both the train and the test split of the dataset")


def member_split(manifest: pd.DataFrame, fold_split: dict[str, list[str]], p: Params, fold: int,
                 member: int) -> dict[str, list[str]]:
    """The train/validation slides of ensemble member ``member`` of fold ``fold``.

    Member 0, ``ensemble_val: shared`` and a fold without validation slides keep ``fold_split``.
    Otherwise the fold's training and validation patients are pooled and ``val_split`` of them is
    held out again, stratified and patient-grouped, drawn from ``(seed, fold, member)``: each member
    selects its model on other slides, so the members' selection noise (a handful of validation
    slides) averages out in the ensemble instead of being shared. The test slides never move.
    """
    if member == 0 or p.ensemble_val == "shared" or not fold_split["val"]:
        return fold_split
    pool = set(fold_split["train"]) | set(fold_split["val"])
    rows = manifest[manifest["slide_id"].astype(str).isin(pool)]
    ids = rows["slide_id"].to_numpy(dtype=str)
    seed = int(np.random.default_rng([p.seed, fold, member]).integers(2**31))
    fit, held = _hold_out(ids, rows["label_index"].to_numpy(), rows["patient_id"].to_numpy(dtype=str),
                          p.val_split, seed)
    if len(held) == 0 or len(fit) == 0:
        print(f"warning: train: fold {fold} member {member}: too few patients to hold out validation slides of "
              f"its own; it selects on the split stage's validation slides (as ensemble_val: shared)",
              file=sys.stderr)
        return fold_split
    return {**fold_split, "train": sorted(fit.tolist()), "val": sorted(held.tolist())}
