"""Model selection, early stopping, class weights, metrics."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from recomil.metrics import bootstrap_auc, classification_metrics
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
    # val_loss: the lower validation cross-entropy is the better score, whatever AUC and accuracy say
    assert selection_score("val_loss", 0.5, 0.5, 1.0, 0.2) > selection_score("val_loss", 1.0, 1.0, 0.1, 0.3)
    assert selection_score("val_loss", 0.8, 0.6, 1.0, 0.3) == -0.3
    # lower training loss is the better score
    assert selection_score("train_loss", None, None, 0.2) > selection_score("train_loss", None, None, 0.3)


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
                            early_stop_after_warmup=False, warmup_epochs=2,
                            select_after_warmup=False)
    prepare_demo(p)
    fold = train_stage.run_train(p, progress=False)["folds"][0]
    assert fold["save_policy"] == policy
    if policy == "last":
        assert fold["best_epoch"] == 4 and not fold["stopped_early"]
    else:
        assert 1 <= fold["best_epoch"] <= fold["epochs_run"]
        if fold["stopped_early"]:  # patience 1: the epoch after the best one stops the run
            assert fold["epochs_run"] - fold["best_epoch"] == 1
        else:
            assert fold["epochs_run"] == 4
    assert (paths.MODELS / "fold_0" / "best.pt").is_file()


def test_no_val_falls_back_to_last(project, tiny_params):
    p = dataclasses.replace(tiny_params, no_val=True, epochs=2)
    prepare_demo(p)
    fold = train_stage.run_train(p, progress=False)["folds"][0]
    assert fold["save_policy"] == "last" and fold["best_epoch"] == 2


def _store_rows(store, slides, scale):
    offs = store.offsets(scale)
    return [(int(offs[store.position(s)]), int(offs[store.position(s) + 1])) for s in slides]


def _overwrite(store, slides, scale, value):
    """Overwrite the stored features of ``slides`` in place (the store itself is read-only)."""
    mm = np.memmap(store.path / f"{scale}.features.bin", dtype=store.meta["dtype"], mode="r+",
                   shape=store.array(scale).shape)
    for a, b in _store_rows(store, slides, scale):
        mm[a:b] = value
    mm.flush()
    del mm


def _train_once(p, project):
    import torch

    from recomil.data.store import FeatureStore
    from recomil.pipeline.data_stages import load_split
    from recomil.pipeline.prototypes_stage import load_prototypes
    from recomil.training.tracking import Tracker
    from recomil.training.trainer import train_fold

    store = FeatureStore(paths.STORE)
    tracker = Tracker(None, mode="disabled", project="x", name="x", group="x", config={})
    resume = project / "r.pt"
    if resume.exists():
        resume.unlink()
    summary = train_fold(p, store, load_split()[0], load_prototypes(store.scales, 0), project / "m", resume,
                         tracker, 0, False)
    return summary, torch.load(project / "m" / "best.pt", weights_only=True)["state_dict"]


def test_test_and_validation_slides_never_reach_kmeans_standardisation_or_selection(project, tiny_params):
    """The real leakage paths, end to end at the stage level: the prototypes stage's k-means and
    standardisation statistics come from the fold's training slides only (checked against
    statistics recomputed here), and overwriting every test slide's features in the store changes
    neither the prototypes nor the trained and selected model. Overwriting the validation slides
    changes model selection only, not the prototypes; overwriting a training slide changes them."""
    import torch

    from recomil.data.store import FeatureStore
    from recomil.pipeline import prototypes_stage
    from recomil.pipeline.data_stages import load_split

    p = dataclasses.replace(tiny_params, epochs=3, warmup_epochs=1, standardize=True)
    prepare_demo(p)
    store = FeatureStore(paths.STORE)
    split = load_split()[0]

    def protos():
        for scale in store.scales:
            prototypes_stage.run_prototypes(p, scale)
        out = {}
        for scale in store.scales:
            with np.load(paths.prototype_file(scale, 0)) as z:
                out[scale] = {k: z[k].copy() for k in ("centres", "counts", "mean", "std")}
        return out

    before = protos()
    for scale in store.scales:
        rows = np.concatenate([np.asarray(store.features(store.position(s), scale), np.float64)
                               for s in split["train"]])
        np.testing.assert_allclose(before[scale]["mean"], rows.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(before[scale]["std"], rows.std(0), rtol=1e-3, atol=1e-4)
        assert before[scale]["counts"].sum() == len(rows)  # the counts cover the training rows only
        everything = np.asarray(store.array(scale), np.float64)
        assert not np.allclose(before[scale]["mean"], everything.mean(0), atol=1e-3)
    summary0, state0 = _train_once(p, project)

    for scale in store.scales:
        _overwrite(store, split["test"], scale, 40.0)
    after = protos()
    for scale in store.scales:
        for key in before[scale]:
            np.testing.assert_array_equal(before[scale][key], after[scale][key])
    summary1, state1 = _train_once(p, project)
    assert summary1["best_epoch"] == summary0["best_epoch"]
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key

    for scale in store.scales:
        _overwrite(store, split["val"], scale, 40.0)
    assert all(np.array_equal(before[s]["centres"], v["centres"]) for s, v in protos().items())

    _overwrite(store, split["train"][:1], "high", 40.0)
    assert not np.allclose(before["high"]["mean"], protos()["high"]["mean"])


def test_amp_auto_is_bf16_on_a_cpu_with_native_bf16_and_float32_without(monkeypatch):
    from recomil.training import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.autocast_dtype("auto", cpu) is torch.bfloat16
    assert dev.autocast_dtype("off", cpu) is None
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.autocast_dtype("auto", cpu) is None
    assert dev.autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        dev.autocast_dtype("fp16", cpu)
    assert dev.precision_name(torch.bfloat16) == "bf16" and dev.precision_name(None) == "fp32"


def test_amp_auto_on_a_cpu_keeps_float32_for_bags_below_the_bf16_threshold(monkeypatch):
    from recomil.training import device as dev

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    n = dev.CPU_BF16_MIN_PATCHES
    assert n == 256
    assert dev.autocast_dtype("auto", cpu, n - 0.5) is None
    assert dev.autocast_dtype("auto", cpu, n) is torch.bfloat16
    assert dev.autocast_dtype("auto", cpu, None) is torch.bfloat16
    assert dev.autocast_dtype("bf16", cpu, 5) is torch.bfloat16  # asked for: no size rule
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.autocast_dtype("auto", cuda, 5) is torch.bfloat16  # the rule is the CPU's
    assert "median of 40 high-scale patches is below 256" in dev.auto_precision_reason("auto", cpu, 40)
    assert dev.auto_precision_reason("auto", cpu, 500) == "" and dev.auto_precision_reason("bf16", cpu, 40) == ""


def test_importing_recomil_caps_onednns_shape_cache_unless_the_environment_sets_it():
    """bf16 on a CPU: oneDNN caches a primitive per bag shape (1,024 by default, ~8 MB each);
    recomil caps the cache at import, before any computation, and keeps a user's own value."""
    import subprocess
    import sys

    code = "import os, recomil; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "16"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "64"


def test_member_zero_trains_with_the_seed_of_a_run_without_an_ensemble():
    """Member 0's torch seed is ``seed + fold``, the plain run's (so ``ensemble: 1`` results are those of
    member 0); further members draw seeds of their own from ``(seed, fold, member)``."""
    from recomil.training.trainer import member_seed

    assert member_seed(7, 2, 0) == 9 and member_seed(2025, 0, 0) == 2025
    seeds = {member_seed(7, 2, m) for m in range(5)}
    assert len(seeds) == 5 and member_seed(7, 2, 3) == member_seed(7, 2, 3) != member_seed(8, 2, 3)
