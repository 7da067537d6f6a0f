"""Model selection, early stopping, class weights, metrics."""

import dataclasses
import math

import numpy as np
import pytest

from recomil.evaluation.metrics import bootstrap_auc, classification_metrics
from recomil.pipeline import paths, train_stage
from recomil.training.trainer import class_weights, selection_score
from tests.conftest import prepare_demo


def test_selection_scores():
    assert selection_score("val_auc", 0.8, 0.6, 1.0) == 0.8
    assert selection_score("val_auc", None, 0.6, 1.0) == 0.6
    assert selection_score("val_acc", 0.8, 0.6, 1.0) == 0.6
    assert selection_score("joint", 0.8, 0.6, 1.0) == pytest.approx(0.7)
    assert selection_score("joint", None, 0.6, 1.0) == pytest.approx(0.3)
    assert selection_score("train_loss", 0.8, 0.6, 0.25) == -0.25
    assert selection_score("last", None, None, 0.3) == math.inf


def test_class_weights_match_the_original_for_two_classes():
    labels = np.array([0] * 30 + [1] * 10)
    w = class_weights(labels, 2)
    p = 0.25
    assert w[0].item() == pytest.approx(0.5 / (1 - p)) and w[1].item() == pytest.approx(0.5 / p)


def test_metrics_binary_multiclass_and_undefined(recwarn):
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(labels, probs)
    assert m["auc"] == 1.0 and m["acc"] == 0.75 and m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    one_class = classification_metrics(np.array([1, 1]), probs[:2])
    assert one_class["auc"] is None and one_class["specificity"] is None
    assert bootstrap_auc(np.array([1, 1]), probs[:2], 100, 0) == (None, None)
    lo, hi = bootstrap_auc(labels, probs, 200, 0)
    assert 0 <= lo <= hi <= 1
    p3 = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.7 + 0.1
    m3 = classification_metrics(np.array([0, 1, 2, 0, 1, 2]), p3)
    assert m3["auc"] == 1.0 and m3["auc_2"] == 1.0 and "sensitivity" not in m3


@pytest.mark.parametrize("policy", ["val_auc", "val_acc", "joint", "train_loss", "last"])
def test_every_save_policy_trains_and_records_its_choice(project, tiny_params, policy):
    p = dataclasses.replace(tiny_params, save_policy=policy, epochs=4, patience=1, class_weight=True,
                            early_stop_after_warmup=False, warmup_epochs=2)
    prepare_demo(p)
    fold = train_stage.run_train(p, progress=False)["folds"][0]
    assert fold["save_policy"] == policy
    if policy == "last":
        assert fold["best_epoch"] == 4 and not fold["stopped_early"]
    else:
        assert 1 <= fold["best_epoch"] <= fold["epochs_run"]
        assert fold["stopped_early"] == (fold["epochs_run"] < 4)
        if fold["stopped_early"]:
            assert fold["epochs_run"] - fold["best_epoch"] == 1
    assert (paths.MODELS / "fold_0" / "best.pt").is_file()


def test_no_val_falls_back_to_last(project, tiny_params):
    p = dataclasses.replace(tiny_params, no_val=True, epochs=2)
    prepare_demo(p)
    fold = train_stage.run_train(p, progress=False)["folds"][0]
    assert fold["save_policy"] == "last" and fold["best_epoch"] == 2


def test_test_slides_never_influence_training(project, tiny_params):
    """train_fold reads only the train and val lists: dropping the test list changes nothing."""
    import torch

    from recomil.data.store import FeatureStore
    from recomil.pipeline.data_stages import load_split
    from recomil.pipeline.prototypes_stage import load_prototypes
    from recomil.training.tracking import Tracker
    from recomil.training.trainer import train_fold

    p = dataclasses.replace(tiny_params, epochs=2)
    prepare_demo(p)
    store = FeatureStore(paths.STORE)
    split = load_split()[0]
    protos = load_prototypes(store.scales, 0)
    states = []
    for variant in ({**split}, {"train": split["train"], "val": split["val"], "test": []}):
        tracker = Tracker(None, mode="disabled", project="x", name="x", group="x", config={})
        train_fold(p, store, variant, protos, project / "m", project / "r.pt", tracker, 0, False)
        (project / "r.pt").unlink()
        states.append(torch.load(project / "m" / "best.pt", weights_only=True)["state_dict"])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])
