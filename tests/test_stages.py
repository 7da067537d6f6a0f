"""Each stage on tiny data, in a temporary project directory; determinism and resume."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from recomil.data.store import FeatureStore
from recomil.inference import load_model
from recomil.pipeline import data_stages, evaluate_stage, paths, prototypes_stage, train_stage
from recomil.training.tracking import Tracker
from tests.conftest import prepare_demo


def test_stages_write_their_outputs(project, tiny_params):
    p = dataclasses.replace(tiny_params, wandb_mode="offline")
    prepare_demo(p)
    store = FeatureStore(paths.STORE)
    assert len(store) == 20 and store.scales == ("high", "low")
    split = json.loads(paths.SPLIT.read_text())["folds"][0]
    assert len(split["test"]) == 8 and not set(split["test"]) & set(split["train"] + split["val"])
    with np.load(paths.prototype_file("low", 0)) as z:
        assert z["centres"].shape == (8, 16)
        train_rows = sum(store.sizes("low")[store.position(s)] for s in split["train"])
        assert z["counts"].sum() == train_rows
    train_stage.run_train(p, progress=False)
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    assert list(log["epoch"]) == [1, 2, 3]
    for col in ("ce", "ortho_high", "ortho_low", "loss", "lr", "tau_high", "tau_low", "fusion_weight", "val_auc",
                "val_acc"):
        assert col in log.columns
    metrics = evaluate_stage.run_evaluate(p)
    saved = json.loads(paths.METRICS.read_text())
    for key in ("auc", "acc", "balanced_acc", "f1", "sensitivity", "specificity", "auc_ci_low", "auc_ci_high",
                "loc_auc", "loc_auc_random"):
        assert key in saved
    assert saved["acc"] == metrics["acc"]
    preds = pd.read_csv(paths.PREDICTIONS)
    assert list(preds.columns) == ["fold", "slide_id", "label", "prob_normal", "prob_tumor", "pred"]
    np.testing.assert_allclose(preds[["prob_normal", "prob_tumor"]].sum(axis=1), 1.0, rtol=1e-6)
    assert (paths.PLOTS / "roc.csv").is_file() and len(pd.read_csv(paths.PLOTS / "confusion.csv")) == 8
    assert list((project / "wandb").glob("offline-run-*")), "wandb offline run directory missing"


def _train_killed_in_epoch_3(p, monkeypatch) -> None:
    """Run the train stage, killed while logging epoch 3 (after epoch 2's resume file, if any)."""

    class Killed(Exception):
        pass

    original = Tracker.log_epoch

    def dies_in_epoch_3(self, row):
        if row["epoch"] == 3:
            raise Killed
        original(self, row)

    with monkeypatch.context() as m:
        m.setattr(Tracker, "log_epoch", dies_in_epoch_3)
        with pytest.raises(Killed):
            train_stage.run_train(p, progress=False)


@pytest.mark.parametrize(("ema_epochs", "snapshots"), [(0.0, 1), (1.0, 1), (0.0, 2)])
def test_training_is_deterministic_and_resumes_exactly(project, tiny_params, monkeypatch, ema_epochs, snapshots):
    # ema 1.0: the weight average resumes too; snapshots 2: the epoch-2 snapshot, kept before the kill, too
    p = dataclasses.replace(tiny_params, ema_epochs=ema_epochs, snapshots=snapshots)
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    first = evaluate_stage.run_evaluate(p)
    first_preds = pd.read_csv(paths.PREDICTIONS)

    _train_killed_in_epoch_3(p, monkeypatch)
    assert (paths.RESUME / "fold_0.pt").is_file()
    import recomil.training.trainer as trainer

    fits = []  # the instance heads' fit is not redone on resume: the saved weights hold its result
    monkeypatch.setattr(trainer, "init_instance_heads", lambda *a, **k: fits.append(a) or {})
    train_stage.run_train(p, progress=False)
    assert p.inst_init == "misvm" and fits == []
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    assert list(log["epoch"]) == [1, 2, 3]
    second = evaluate_stage.run_evaluate(p)
    assert first == second
    pd.testing.assert_frame_equal(first_preds, pd.read_csv(paths.PREDICTIONS))
    assert not (paths.RESUME / "fold_0.pt").exists()


def test_a_prototypes_rerun_with_the_same_centres_writes_the_same_bytes(project, tiny_params, monkeypatch):
    # DVC hashes the output folder: a timing (or anything else that changes between identical
    # runs) in it would make `dvc repro` re-train after every prototypes re-run
    prepare_demo(tiny_params)

    def snapshot():
        return {f.relative_to(paths.PROTOTYPES): f.read_bytes() for f in sorted(paths.PROTOTYPES.rglob("*"))
                if f.is_file()}

    first = snapshot()
    seconds = iter([0.5, 7.0, 0.25, 3.0])
    real = prototypes_stage.lloyd_kmeans

    def timed(*args, **kwargs):  # the same centres, other wall times
        return dataclasses.replace(real(*args, **kwargs), seconds=next(seconds))

    monkeypatch.setattr(prototypes_stage, "lloyd_kmeans", timed)
    returned = [prototypes_stage.run_prototypes(tiny_params, scale) for scale in ("high", "low")]
    assert snapshot() == first
    assert [f["seconds"] for r in returned for f in r["folds"]] == [0.5, 7.0]  # the log keeps them


def test_single_scale_folder_and_abmil(project, tiny_params, tmp_path):
    root = tmp_path / "bags"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["slide_id,label"]
    for i in range(16):
        x = rng.normal(size=(int(rng.integers(3, 9)), 6)).astype(np.float32)
        x[0] += 3.0 * (i % 2)
        np.save(root / f"b{i}.npy", x)
        rows.append(f"b{i},{i % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    base = dataclasses.replace(tiny_params, dataset="folder", root_dir_high=str(root),
                               labels_csv=str(tmp_path / "labels.csv"), num_protos_high=8, folds=2,
                               standardize=True)
    for model in ("recomil", "abmil"):
        p = dataclasses.replace(base, model=model)
        data_stages.run_ingest(p, progress=False)
        data_stages.run_split(p)
        for scale in ("high", "low"):
            prototypes_stage.run_prototypes(p, scale)
        assert json.loads((paths.PROTOTYPES / "low" / "summary.json").read_text())["present"] is False
        with np.load(paths.prototype_file("high", 0)) as z:
            assert z["std"].shape == (6,) and not np.allclose(z["std"], 1.0)
            mean = z["mean"]
        train_stage.run_train(p, progress=False)
        model, _, _ = load_model(paths.MODELS / "fold_0" / "best.pt")
        np.testing.assert_allclose(model.input_norm["high"].mean.numpy(), mean)
        metrics = evaluate_stage.run_evaluate(p)
        assert "auc_std" in metrics and len(metrics["per_fold"]) == 2
        assert metrics["n_test"] == 16


def test_predict_reproduces_evaluate_on_held_out_slides(project, tiny_params, tmp_path):
    from recomil.cli import main

    prepare_demo(tiny_params)
    train_stage.run_train(tiny_params, progress=False)
    evaluate_stage.run_evaluate(tiny_params)
    out = tmp_path / "new.csv"
    assert main(["predict", "--model", "models", "--features", "data/demo/test", "--out", str(out),
                 "--topk", "3"]) == 0
    new = pd.read_csv(out).set_index("slide_id")
    ref = pd.read_csv(paths.PREDICTIONS).set_index("slide_id")
    assert sorted(new.index) == sorted(ref.index)
    np.testing.assert_allclose(new.loc[ref.index, "prob_tumor"], ref["prob_tumor"], rtol=1e-5, atol=1e-6)
    top = pd.read_csv(tmp_path / "new_topk.csv")
    assert len(top) == 8 * 2 * 3 and top[["x", "y"]].notna().all().all()
    assert main(["predict", "--model", "models", "--features", str(tmp_path / "none"), "--out", str(out)]) == 1


def test_high_scale_only_on_dual_scale_demo(project, tiny_params):
    """``use_low_scale: false`` trains and evaluates the high branch alone; explanations cover high only."""
    p = dataclasses.replace(tiny_params, use_low_scale=False)
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    model, _, _ = load_model(paths.MODELS / "fold_0" / "best.pt")
    assert model.scales == ["high"]
    metrics = evaluate_stage.run_evaluate(p)
    assert metrics["n_test"] == 8
    top = pd.read_csv(paths.EXPLAIN / "top_patches.csv")
    assert set(top["scale"]) == {"high"}


def test_a_fold_that_stopped_early_stays_stopped_after_a_crash_in_a_later_fold(project, tiny_params, monkeypatch,
                                                                                capsys):
    """#17.1: folds 2, patience 1; a crash during fold 1 and a rerun give exactly the uninterrupted
    result: fold 0 (which had stopped early) is not trained on."""
    p = dataclasses.replace(tiny_params, folds=2, patience=1, epochs=8, warmup_epochs=1, freeze_protos_epochs=1,
                            early_stop_after_warmup=False, save_policy="val_acc")
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    reference = json.loads((paths.MODELS / "summary.json").read_text())["folds"]
    assert reference[0]["stopped_early"], "the case needs fold 0 to stop early"
    ref_state = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
    first = evaluate_stage.run_evaluate(p)

    class Killed(Exception):
        pass

    original = Tracker.log_epoch

    def dies_in_fold_1(self, row):
        original(self, row)
        if self.csv_path is not None and self.csv_path.name == "fold_1.csv" and row["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(Tracker, "log_epoch", dies_in_fold_1)
    with pytest.raises(Killed):
        train_stage.run_train(p, progress=False)
    monkeypatch.setattr(Tracker, "log_epoch", original)
    capsys.readouterr()
    train_stage.run_train(p, progress=False)
    assert "fold 0 has already finished" in capsys.readouterr().err
    again = json.loads((paths.MODELS / "summary.json").read_text())["folds"]
    assert again == reference
    state = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert evaluate_stage.run_evaluate(p) == first


def test_a_corrupt_or_foreign_resume_file_is_reported_and_ignored(project, tiny_params, capsys):
    p = tiny_params
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    ref = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
    paths.RESUME.mkdir(parents=True, exist_ok=True)
    for content in (b"garbage, not a checkpoint", None):
        if content is None:
            torch.save({"fingerprint": "another run", "model": {}, "optimizer": {}, "rng": torch.get_rng_state(),
                        "state": {}}, paths.RESUME / "fold_0.pt")
        else:
            (paths.RESUME / "fold_0.pt").write_bytes(content)
        capsys.readouterr()
        train_stage.run_train(p, progress=False)
        err = capsys.readouterr().err
        assert "warning: train: fold 0" in err and str(paths.RESUME / "fold_0.pt") in err
        state = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(state[k], ref[k]) for k in ref)


def test_epoch_lines_without_a_terminal_give_seconds_and_time_left(project, tiny_params, capsys):
    prepare_demo(tiny_params)
    train_stage.run_train(tiny_params, progress=True)  # stderr is not a terminal under pytest
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("fold 0 epoch ")]
    assert len(lines) == tiny_params.epochs
    assert all(" s, at most " in x and "left in this fold" in x for x in lines)
    assert "fold 0: 3 epochs" in err and "best epoch" in err


def test_cross_validated_figures_come_with_intervals_that_describe_them(project, tiny_params, capsys):
    """#17.14/21: with folds > 1 `auc` is the mean over folds and its interval is the mean's; the
    pooled predictions get `auc_pooled` and its own interval; each fold its own; small test sets warn."""
    p = dataclasses.replace(tiny_params, folds=2, epochs=2, bootstrap=200)
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    m = evaluate_stage.run_evaluate(p)
    assert m["auc"] == pytest.approx(np.mean([f["auc"] for f in m["per_fold"]]))
    preds = pd.read_csv(paths.PREDICTIONS)
    from recomil.metrics import auc_score

    probs = preds[["prob_normal", "prob_tumor"]].to_numpy()
    assert m["auc_pooled"] == pytest.approx(auc_score((preds["label"] == "tumor").to_numpy().astype(int), probs))
    for lo, hi, mid in [(m["auc_ci_low"], m["auc_ci_high"], m["auc"]),
                        (m["auc_pooled_ci_low"], m["auc_pooled_ci_high"], m["auc_pooled"]),
                        *[(f["auc_ci_low"], f["auc_ci_high"], f["auc"]) for f in m["per_fold"]]]:
        assert (lo is None and hi is None) or lo <= mid <= hi or (lo < hi)
    assert "warning: evaluate: a test set has only" in capsys.readouterr().err


def test_a_degenerate_interval_is_reported_as_undefined():
    from recomil.metrics import bootstrap_auc

    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    lo, hi = bootstrap_auc(labels, probs, 100, 0)
    assert (lo, hi) == (1.0, 1.0)
    m = {"auc": 1.0, "auc_ci_low": 0.9999999999999999, "auc_ci_high": hi, "auc_pooled_ci_low": 0.5,
         "auc_pooled_ci_high": 0.9}
    evaluate_stage.drop_degenerate_intervals(m)
    assert m["auc_ci_low"] is None and m["auc_ci_high"] is None and m["auc_pooled_ci_low"] == 0.5


def test_resume_files_are_written_at_most_every_resume_every_s(project, tiny_params, monkeypatch):
    """With resume_every_s far above a run's length no epoch is saved before the fold's end: a run
    killed in epoch 3 leaves no resume file, and the rerun trains from the start to the same result;
    an uninterrupted run still leaves its finished state."""
    p = dataclasses.replace(tiny_params, resume_every_s=1e9)
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    first = evaluate_stage.run_evaluate(p)

    _train_killed_in_epoch_3(p, monkeypatch)
    assert not (paths.RESUME / "fold_0.pt").exists()
    train_stage.run_train(p, progress=False)
    assert evaluate_stage.run_evaluate(p) == first
