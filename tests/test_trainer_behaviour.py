"""METHOD.md §4 observed through real training runs (not by calling the schedule functions).

One tiny demo project is prepared per module; each test trains on it with ``train_fold`` and
reads what the run left behind: the logged rows, the selected checkpoint and the resume file
(which holds the optimiser's state).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from recomil.config import ConfigError, make_params
from recomil.data.store import FeatureStore
from recomil.inference import load_model
from recomil.pipeline import paths
from recomil.pipeline.data_stages import load_split
from recomil.pipeline.prototypes_stage import load_prototypes
from recomil.training.bags import BagSet
from recomil.training.instance_loss import instance_loss
from recomil.training.tracking import Tracker
from recomil.training.trainer import train_fold
from tests.conftest import TINY, prepare_demo

SMALL = {**TINY, "demo_train_slides": 10, "demo_test_slides": 4, "demo_min_patches": 30, "demo_max_patches": 50,
         "num_protos_high": 8, "num_protos_low": 8, "embed_dim_high": 16, "embed_dim_low": 16}


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    old = os.getcwd()
    os.chdir(root)
    try:
        prepare_demo(make_params(SMALL))
    finally:
        os.chdir(old)
    return root


def _train(root, tag: str, **overrides):
    """Train fold 0 of the demo project with ``overrides``; returns (summary, rows, best.pt, resume)."""
    p = dataclasses.replace(make_params(SMALL), **overrides)
    store = FeatureStore(root / paths.STORE)
    split = load_split(root / paths.SPLIT)[0]
    protos = load_prototypes(store.scales, 0, root / paths.PROTOTYPES)
    tracker = Tracker(None, mode="disabled", project="t", name="t", group="t", config={})
    out, resume = root / "runs" / tag, root / "runs" / f"{tag}.resume.pt"
    if resume.exists():
        resume.unlink()
    summary = train_fold(p, store, split, protos, out, resume, tracker, 0, False)
    return p, summary, tracker.rows, out / "best.pt", torch.load(resume, weights_only=True)


def _lr_factor(e, warmup, epochs):  # METHOD.md §4, restated
    if e <= warmup:
        return e / warmup
    return 0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup)))


def test_lr_and_temperature_per_epoch_reach_the_optimiser_and_the_model(demo_project):
    p, summary, rows, best, resume = _train(demo_project, "sched", epochs=5, warmup_epochs=2, tau_epochs_high=3,
                                            tau_epochs_low=4, tau_start_high=1.5, tau_end_high=0.5,
                                            save_policy="last", lr=1e-3)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        e = r["epoch"]
        assert r["lr"] == pytest.approx(1e-3 * _lr_factor(e, 2, 5))
        assert r["tau_high"] == pytest.approx(1.5 + (0.5 - 1.5) * min(1, e / 3))
        assert r["tau_low"] == pytest.approx(1.2 + (0.7 - 1.2) * min(1, e / 4))
    # the optimiser ran the last epoch at that epoch's rate (0: the cosine ends at 0)
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-12) for g in resume["optimizer"]["param_groups"])
    model, _, _ = load_model(best)
    assert model.branches["high"].tau.item() == pytest.approx(0.5)
    assert model.branches["low"].tau.item() == pytest.approx(1.2 + (0.7 - 1.2) * 1.0)
    assert model.branches["high"].sim_scale.item() == 1.0  # METHOD.md "Decide": never trained


def test_epoch_rates_after_four_epochs(demo_project):
    """The resume file of a run stopped by its epoch budget holds the optimiser at that epoch's rate."""
    _, _, rows, _, resume = _train(demo_project, "sched4", epochs=6, warmup_epochs=3, save_policy="last",
                                   lr=2e-3)
    assert rows[2]["lr"] == pytest.approx(2e-3)  # the warm-up peaks at epoch == warmup_epochs
    assert rows[0]["lr"] == pytest.approx(2e-3 / 3)


@pytest.mark.parametrize("freeze,changed", [(2, False), (1, True)])
def test_raw_prototypes_are_frozen_for_epochs_up_to_freeze_protos_epochs(demo_project, freeze, changed):
    # epochs 3, warm-up 1: LR factors 1, 0.5, 0 (the last epoch trains nothing)
    _, _, _, best, _ = _train(demo_project, f"freeze{freeze}", epochs=3, warmup_epochs=1, freeze_protos_epochs=freeze,
                              save_policy="last", lr=1e-2, lambda_ortho_high=1.0, lambda_ortho_low=1.0)
    start = load_prototypes(("high", "low"), 0, demo_project / paths.PROTOTYPES)
    state = torch.load(best, weights_only=True)["state_dict"]
    for s in ("high", "low"):
        same = torch.allclose(state[f"branches.{s}.protos"], torch.from_numpy(start[s]["centres"]))
        assert same != changed, f"scale {s}: prototypes after 3 epochs with freeze_protos_epochs {freeze}"


def _orth(protos):  # METHOD.md §4: L_orth, restated
    pn = protos / protos.norm(dim=1, keepdim=True)
    g = pn @ pn.T
    k = g.shape[0]
    return ((g ** 2).sum() - (torch.diagonal(g) ** 2).sum()) / (k * (k - 1))


@pytest.mark.parametrize("smoothing,lam", [(0.03, 0.02), (0.2, 0.5), (0.0, 0.0)])
def test_the_loss_optimised_is_smoothed_cross_entropy_plus_the_orthogonal_terms(demo_project, smoothing, lam):
    """With a vanishing learning rate and no dropout or gate, the first epoch's logged terms can be
    recomputed from the checkpoint: CE with label smoothing, lambda * L_orth per scale, and
    lambda_inst times the instance-level loss (mean over scales)."""
    p, _, rows, best, _ = _train(demo_project, f"loss{smoothing}", epochs=1, warmup_epochs=1, lr=1e-12, drop=0.0,
                                 outlier_top_p_high=0.0, outlier_top_p_low=0.0, label_smoothing=smoothing,
                                 lambda_ortho_high=lam, lambda_ortho_low=2 * lam, save_policy="last", amp="off")
    model, mp, _ = load_model(best)
    store = FeatureStore(demo_project / paths.STORE)
    train = BagSet(store, load_split(demo_project / paths.SPLIT)[0]["train"], mp.scales)
    ces, insts = [], []
    with torch.no_grad():
        for j in range(len(train)):
            bag = train.bag(j)
            out = model(bag["high"], bag.get("low"))
            logits = out["logits"][0]
            insts.append(np.mean([instance_loss(out[f"instance_logits_{s}"], int(train.labels[j]) == 1,
                                                mp.inst_top_p).item() for s in mp.scales]))
            logp = torch.log_softmax(logits, -1)
            y = int(train.labels[j])
            c = logits.shape[0]
            target = torch.full((c,), smoothing / c)
            target[y] += 1 - smoothing
            ces.append(-(target * logp).sum().item())
    row = rows[0]
    assert row["ce"] == pytest.approx(np.mean(ces), rel=1e-4, abs=1e-5)
    orth = {s: _orth(model.branches[s].protos.detach()).item() for s in ("high", "low")}
    assert row["ortho_high"] == pytest.approx(orth["high"], rel=1e-4)
    assert row["inst"] == pytest.approx(np.mean(insts), rel=1e-4, abs=1e-5)  # the instance-level loss (default on)
    expected = row["ce"] + lam * orth["high"] + 2 * lam * orth["low"] + mp.lambda_inst * row["inst"]
    assert row["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    if lam > 0:
        assert row["loss"] - row["ce"] > 1e-4, "the case must exercise the orthogonal term"


def test_orthogonal_term_trains_the_released_prototypes(demo_project):
    """With a large lambda the orthogonal term (in the loss) drives L_orth down once released."""
    kw = dict(epochs=4, warmup_epochs=1, freeze_protos_epochs=1, lr=5e-3, save_policy="last")
    start = load_prototypes(("high",), 0, demo_project / paths.PROTOTYPES)["high"]["centres"]
    before = _orth(torch.from_numpy(start)).item()
    _, _, _, with_term, _ = _train(demo_project, "ortho_on", lambda_ortho_high=50.0, **kw)
    _, _, _, without, _ = _train(demo_project, "ortho_off", lambda_ortho_high=0.0, **kw)
    after_on = _orth(torch.load(with_term, weights_only=True)["state_dict"]["branches.high.protos"]).item()
    after_off = _orth(torch.load(without, weights_only=True)["state_dict"]["branches.high.protos"]).item()
    assert after_on < before and after_on < after_off


def test_patience_counts_only_after_warmup_and_freezing_and_min_delta_blocks_small_gains(demo_project):
    """A min_delta no score can beat makes epoch 1 the best; the run then stops after ``patience``
    stale epochs, counted from epoch 1 (original) or after max(warm-up, freezing) (default)."""
    kw = dict(epochs=9, warmup_epochs=3, freeze_protos_epochs=2, patience=2, min_delta=5.0, save_policy="train_loss",
              lr=1e-3)
    _, orig, _, _, _ = _train(demo_project, "es_orig", early_stop_after_warmup=False, **kw)
    assert orig["best_epoch"] == 1 and orig["stopped_early"] and orig["epochs_run"] == 3
    _, late, _, _, _ = _train(demo_project, "es_late", early_stop_after_warmup=True, **kw)
    assert late["best_epoch"] == 1 and late["stopped_early"] and late["epochs_run"] == 5
    kw["freeze_protos_epochs"] = 4
    _, frozen, _, _, _ = _train(demo_project, "es_frozen", early_stop_after_warmup=True, **kw)
    assert frozen["epochs_run"] == 6
    # the same runs without min_delta select a later epoch: the training loss does fall
    _, free, _, _, _ = _train(demo_project, "es_free", early_stop_after_warmup=False, **{**kw, "min_delta": 0.0})
    assert free["best_epoch"] > 1


def test_min_delta_zero_keeps_any_strict_improvement(demo_project):
    """With ``train_loss`` selection and min_delta 0 the best epoch is the one of lowest loss."""
    _, summary, rows, _, _ = _train(demo_project, "md0", epochs=4, warmup_epochs=1, patience=10,
                                    save_policy="train_loss", min_delta=0.0, lr=1e-3)
    losses = [r["loss"] for r in rows]
    assert summary["best_epoch"] == int(np.argmin(losses)) + 1


def test_an_ensemble_trains_members_with_their_own_seeds_and_averages_them(demo_project, monkeypatch):
    """``ensemble: 3``: member 0 is exactly the run without an ensemble (same seed streams), the
    others start from other weights and bag orders and select on validation slides of their own
    (``ensemble_val: resplit``); the evaluate stage's test probabilities and
    attention are the members' means."""
    from recomil.inference import member_files, predict_bags
    from recomil.pipeline import evaluate_stage, train_stage

    monkeypatch.chdir(demo_project)
    base = dict(SMALL, epochs=3, warmup_epochs=1, freeze_protos_epochs=1, wandb_mode="disabled", bootstrap=0,
                threads=1)
    train_stage.run_train(make_params({**base, "ensemble": 1}), progress=False)
    single = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)["state_dict"]
    summary = train_stage.run_train(make_params({**base, "ensemble": 3}), progress=False)
    files = member_files(paths.MODELS / "fold_0")
    assert [f.name for f in files] == ["best.pt", "best_m1.pt", "best_m2.pt"]
    assert [m["member"] for m in summary["folds"][0]["members"]] == [1, 2]
    fold = load_split(paths.SPLIT)[0]
    vals = [summary["folds"][0]["val_slides"], *(m["val_slides"] for m in summary["folds"][0]["members"])]
    assert vals[0] == fold["val"]  # member 0 on the split stage's validation slides
    assert vals[1] != vals[0] and vals[2] != vals[1]  # ensemble_val: resplit
    assert all(not set(v) & set(fold["test"]) for v in vals)
    states = [torch.load(f, weights_only=True)["state_dict"] for f in files]
    assert all(torch.equal(single[k], states[0][k]) for k in single)  # member 0 = the plain run
    w = "branches.high.proj_x.0.weight"
    assert not torch.equal(states[0][w], states[1][w]) and not torch.equal(states[1][w], states[2][w])
    assert (paths.TRAIN_LOG / "fold_0_m2.csv").is_file()
    evaluate_stage.run_evaluate(make_params({**base, "ensemble": 3}))
    import pandas as pd

    pred = pd.read_csv(paths.PREDICTIONS)
    store = FeatureStore(paths.STORE)
    test = BagSet(store, load_split(paths.SPLIT)[0]["test"])
    per_member = [predict_bags(load_model(f)[0], [test.bag(j) for j in range(len(test))]) for f in files]
    mean = np.mean([pr for pr, _ in per_member], axis=0)
    classes = store.classes
    assert np.allclose(pred[f"prob_{classes[1]}"].to_numpy(), mean[:, 1], atol=1e-6)
    assert not np.allclose(per_member[0][0][:, 1], mean[:, 1], atol=1e-6)
    # back to one model: the stale members are removed, evaluation uses best.pt alone
    train_stage.run_train(make_params({**base, "ensemble": 1}), progress=False)
    assert member_files(paths.MODELS / "fold_0") == [paths.MODELS / "fold_0" / "best.pt"]


def _replay_selection(rows, tie_break: str, start: int = 1) -> int:
    """The best epoch by the rule of ``tie_break`` among epochs ``start`` on, replayed from the
    logged validation metrics (save_policy val_acc, min_delta 0)."""
    best, best_loss, best_epoch = -math.inf, math.inf, 0
    for r in rows[start - 1:]:
        score = r["val_acc"]
        if score > best or (tie_break == "val_loss" and score >= best and r["val_loss"] < best_loss):
            best, best_loss, best_epoch = score, r["val_loss"], r["epoch"]
    return best_epoch


def test_a_tied_validation_score_goes_to_the_epoch_of_lower_validation_loss(demo_project):
    """Few validation slides saturate the accuracy in the first epochs; ``tie_break: val_loss``
    then moves the selection on to the epoch whose validation cross-entropy is lowest, ``none``
    keeps the first epoch of the best score (the original)."""
    kw = dict(epochs=6, warmup_epochs=1, freeze_protos_epochs=1, patience=10, save_policy="val_acc", lr=1e-3,
              select_after_warmup=False, instance_stream=False, inst_on="tokens", inst_init="none")
    _, tied, rows, _, _ = _train(demo_project, "tie_loss", tie_break="val_loss", **kw)
    _, first, rows_first, _, _ = _train(demo_project, "tie_none", tie_break="none", **kw)
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in rows_first]  # selection only
    assert tied["best_epoch"] == _replay_selection(rows, "val_loss")
    assert first["best_epoch"] == _replay_selection(rows, "none")
    assert tied["best_epoch"] != first["best_epoch"]  # the data of this test does tie


def test_save_policy_val_loss_selects_the_epoch_of_lowest_validation_cross_entropy(demo_project):
    """``save_policy: val_loss`` keeps the candidate epoch of lowest validation loss (from the first
    epoch after warm-up and freezing) and counts patience against it."""
    kw = dict(epochs=7, warmup_epochs=2, freeze_protos_epochs=2, patience=3, save_policy="val_loss", lr=3e-3)
    _, summary, rows, best, _ = _train(demo_project, "val_loss", **kw)
    losses = {r["epoch"]: r["val_loss"] for r in rows if r["epoch"] >= 3}
    assert summary["best_epoch"] == min(losses, key=losses.get)
    assert summary["best_score"] == pytest.approx(-losses[summary["best_epoch"]])
    since = [e for e in losses if e > summary["best_epoch"]]
    assert summary["stopped_early"] == (len(since) >= 3) and len(since) <= 3


def test_save_policy_val_loss_without_validation_slides_trains_every_epoch_and_keeps_the_last(demo_project, capsys):
    """As every validation policy (``joint``: tests/test_training.py::test_no_val_falls_back_to_last)."""
    policy = "val_loss"
    p = dataclasses.replace(make_params(SMALL), epochs=3, warmup_epochs=1, freeze_protos_epochs=1, save_policy=policy)
    store = FeatureStore(demo_project / paths.STORE)
    split = {**load_split(demo_project / paths.SPLIT)[0], "val": []}
    protos = load_prototypes(store.scales, 0, demo_project / paths.PROTOTYPES)
    tracker = Tracker(None, mode="disabled", project="t", name="t", group="t", config={})
    out = demo_project / "runs" / f"noval_{policy}"
    summary = train_fold(p, store, split, protos, out, out.with_suffix(".resume.pt"), tracker, 0, False)
    assert summary["save_policy"] == "last" and summary["best_epoch"] == 3
    assert f"save_policy {policy} falls back to 'last'" in capsys.readouterr().err


def test_validation_loss_is_the_mean_cross_entropy_of_the_true_class():
    from recomil.training.trainer import improves, validation_loss

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    assert validation_loss(probs, np.array([0, 1, 0])) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 3)
    assert validation_loss(probs, np.array([1, 1, 1])) == pytest.approx(
        -(math.log(0.1) + math.log(0.8) + math.log(1e-12)) / 3)
    assert improves("joint", "val_loss", 0.9, 0.3, 0.9, 0.4, 0.0)      # tie, lower loss
    assert not improves("joint", "val_loss", 0.9, 0.5, 0.9, 0.4, 0.0)  # tie, higher loss
    assert not improves("joint", "none", 0.9, 0.3, 0.9, 0.4, 0.0)      # the original keeps the first
    assert not improves("joint", "val_loss", 0.8, 0.1, 0.9, 0.4, 0.0)  # a lower score never wins
    assert improves("joint", "none", 0.95, 0.9, 0.9, 0.4, 0.0)
    assert not improves("joint", "val_loss", 0.95, 0.9, 0.9, 0.4, 0.1)  # min_delta blocks small gains
    assert not improves("train_loss", "val_loss", -1.0, 0.1, -1.0, 0.4, 0.0)  # no validation policy


def test_warm_up_epochs_are_not_selected_unless_select_after_warmup_is_false(demo_project):
    """A warm-up epoch that scores highest on a few validation slides by chance was kept before;
    with ``select_after_warmup`` the model comes from the epochs after warm-up and freezing, and
    those epochs alone count towards patience."""
    kw = dict(epochs=8, warmup_epochs=3, freeze_protos_epochs=4, patience=10, save_policy="val_acc", lr=1e-3,
              tie_break="none")
    _, late, rows, _, _ = _train(demo_project, "sel_late", select_after_warmup=True, **kw)
    _, early, rows_early, _, _ = _train(demo_project, "sel_all", select_after_warmup=False, **kw)
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in rows_early]
    assert late["best_epoch"] == _replay_selection(rows, "none", start=5) >= 5
    assert early["best_epoch"] == _replay_selection(rows, "none") < 5  # this data's best score comes early
    # with patience 2 the late rule stops 2 epochs after its first candidate fails to improve
    _, short, rows_short, _, _ = _train(demo_project, "sel_pat", select_after_warmup=True,
                                        **{**kw, "patience": 1, "epochs": 12})
    assert short["best_epoch"] >= 5 and short["epochs_run"] >= 6
    # a run that ends within warm-up selects from every epoch
    _, within, rows_within, _, _ = _train(demo_project, "sel_within", select_after_warmup=True,
                                          **{**kw, "epochs": 4})
    assert within["best_epoch"] == _replay_selection(rows_within, "none")


def test_selection_start_is_the_epoch_after_warmup_and_freezing_for_validation_policies():
    from recomil.training.trainer import selection_start

    p = make_params({"warmup_epochs": 12, "freeze_protos_epochs": 14, "epochs": 50})
    assert selection_start(p, "joint") == 15 and selection_start(p, "val_auc") == 15
    assert selection_start(p, "train_loss") == 1 and selection_start(p, "last") == 1
    assert selection_start(dataclasses.replace(p, select_after_warmup=False), "joint") == 1
    assert selection_start(dataclasses.replace(p, epochs=14), "joint") == 1


def test_ema_decay_is_one_time_constant_of_ema_epochs_epochs():
    from recomil.training.trainer import ema_decay

    assert ema_decay(2.0, 50) == pytest.approx(1 - 1 / 100)
    assert ema_decay(0.5, 10) == pytest.approx(1 - 1 / 5)
    assert ema_decay(0.01, 10) == 0.0  # under one step: the current weights


def test_ema_epochs_validates_selects_and_saves_the_moving_average_of_the_weights(demo_project, monkeypatch):
    """``ema_epochs: E``: after every optimiser step the average moves ``1 / (E * steps per epoch)``
    of the way to the weights (the first step copies them); the validation metrics, the selection and
    ``best.pt`` are those of the average at the selected epoch, the training itself is unchanged."""
    from torch.optim.swa_utils import AveragedModel

    from recomil.inference import predict_bags
    from recomil.training.trainer import validation_loss

    seen: list[dict[str, torch.Tensor]] = []
    update = AveragedModel.update_parameters

    def record(self, model):
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", record)
    kw = dict(epochs=4, warmup_epochs=1, freeze_protos_epochs=1, patience=10, save_policy="joint", lr=3e-3,
              select_after_warmup=False)
    p, summary, rows, best, resume = _train(demo_project, "ema", ema_epochs=1.5, **kw)
    steps = len(BagSet(FeatureStore(demo_project / paths.STORE),
                       load_split(demo_project / paths.SPLIT)[0]["train"]))
    assert len(seen) == 4 * steps
    decay = 1 - 1 / (1.5 * steps)
    ema = {k: v.clone() for k, v in seen[0].items()}
    per_epoch = []
    for i, w in enumerate(seen[1:], start=2):
        for k in ema:
            ema[k] = decay * ema[k] + (1 - decay) * w[k]
        if i % steps == 0:
            per_epoch.append({k: v.clone() for k, v in ema.items()})
    saved = torch.load(best, weights_only=True)["state_dict"]
    chosen = per_epoch[summary["best_epoch"] - 1]
    assert all(torch.allclose(saved[k], chosen[k], atol=1e-6) for k in chosen)
    last = resume["model"]
    assert not all(torch.allclose(saved[k], last[k], atol=1e-4) for k in chosen)  # not the raw weights
    # the logged validation loss of the selected epoch is the average's
    model, _, _ = load_model(best)
    val = BagSet(FeatureStore(demo_project / paths.STORE), load_split(demo_project / paths.SPLIT)[0]["val"])
    amp = {"bf16": torch.bfloat16, "fp32": None}[summary["precision"]]  # as the training validated
    probs, _ = predict_bags(model, [val.bag(j) for j in range(len(val))], amp)
    assert validation_loss(probs, val.labels) == pytest.approx(rows[summary["best_epoch"] - 1]["val_loss"], rel=1e-4)
    # the weights trained are those of a run without the average
    monkeypatch.setattr(AveragedModel, "update_parameters", update)
    _, _, _, _, plain = _train(demo_project, "no_ema", **kw)
    assert all(torch.equal(plain["model"][k], last[k]) for k in last)


def test_the_selection_replay_benchmark_reproduces_the_trainers_selection_and_stop(demo_project):
    """benchmarks/selection_replay.py replays selection rules from logged epochs through the trainer's
    own step: from a run's rows it must find the run's selected epoch and the epoch it stopped at."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import selection_replay

    kw = dict(epochs=12, warmup_epochs=2, freeze_protos_epochs=3, patience=2, save_policy="joint", lr=3e-3)
    _, summary, rows, _, _ = _train(demo_project, "replay", **kw)
    rec = {k: [r[k] for r in rows] for k in ("loss", "val_auc", "val_acc", "val_loss")}
    assert selection_replay.replay(rec, **kw) == (summary["best_epoch"], summary["epochs_run"])
    assert summary["stopped_early"]  # the data of this test stop before the last epoch
    rec["test_labels"] = [0, 1, 1]
    rec["test_prob"] = [[0.1, 0.2, 0.9], [0.4, 0.35, 0.5]]  # epoch 1 ranks perfectly, epoch 2 does not
    assert selection_replay.test_auc(rec, [1]) == 1.0 and selection_replay.test_auc(rec, [2]) == 0.5
    assert selection_replay.test_auc(rec, [1, 2]) == 1.0  # the mean probability: 0.25, 0.275, 0.7
    assert math.isnan(selection_replay.test_auc(rec, [3]))


def test_snapshots_keep_the_weights_of_evenly_spaced_epochs_after_warm_up_as_members(demo_project, monkeypatch):
    """``snapshots: 3`` over epochs 3..7 (warm-up 2): the weights of epochs 3, 5 and 7 are kept, the last as
    ``best.pt`` and the others as further members of the fold; every epoch is trained (no early stop,
    no selection) and the training is the same as without snapshots."""
    import recomil.training.trainer as trainer
    from recomil.inference import member_files, predict_probs

    seen: list[dict[str, torch.Tensor]] = []

    def validate(model, bags, amp=None, batch=1):  # the weights that each epoch validates
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return predict_probs(model, bags, amp, batch=batch)

    monkeypatch.setattr(trainer, "predict_probs", validate)
    kw = dict(epochs=7, warmup_epochs=2, freeze_protos_epochs=2, patience=1, lr=3e-3, save_policy="joint")
    p, summary, rows, best, _ = _train(demo_project, "snap", snapshots=3, **kw)
    assert trainer.snapshot_epochs(p) == [3, 5, 7] == summary["snapshot_epochs"]
    assert [r["epoch"] for r in rows] == list(range(1, 8)) and summary["best_epoch"] == 7  # patience 1 unused
    files = member_files(best.parent)
    assert [f.name for f in files] == ["best.pt", "best_m1.pt", "best_m2.pt"]
    for f, e in zip(files, (7, 3, 5)):
        saved = load_model(f)[0].state_dict()
        assert all(torch.equal(saved[k], seen[e - 1][k]) for k in saved), f"{f.name} is not epoch {e}"
    seen.clear()
    _, plain, rows_plain, _, _ = _train(demo_project, "snap_off", snapshots=1, **{**kw, "save_policy": "last"})
    assert [r["loss"] for r in rows_plain] == [r["loss"] for r in rows]
    assert trainer.snapshot_epochs(dataclasses.replace(p, snapshots=5, epochs=50, warmup_epochs=12,
                                                       freeze_protos_epochs=12)) == [13, 22, 32, 41, 50]


def test_amp_auto_trains_small_bags_in_float32_and_large_ones_in_bf16_on_a_bf16_cpu(demo_project, monkeypatch):
    from recomil.training import device as dev

    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    sizes = FeatureStore(demo_project / paths.STORE).sizes("high")
    median = float(np.median(sizes[BagSet(FeatureStore(demo_project / paths.STORE),
                                          load_split(demo_project / paths.SPLIT)[0]["train"]).positions]))
    assert 30 <= median <= 50  # the SMALL demo's training bags
    assert _train(demo_project, "amp-small", epochs=1, save_policy="last")[1]["precision"] == "fp32"
    assert _train(demo_project, "amp-forced", epochs=1, save_policy="last", amp="bf16")[1]["precision"] == "bf16"
    monkeypatch.setattr(dev, "CPU_BF16_MIN_PATCHES", int(median))  # the training bags' median: large enough
    assert _train(demo_project, "amp-large", epochs=1, save_policy="last")[1]["precision"] == "bf16"


def test_ensemble_protos_resample_gives_each_member_k_means_prototypes_of_its_own(demo_project, monkeypatch):
    """``ensemble_protos: resample``: the prototypes stage fits centres per further member on the same
    training slides from another k-means seed; member 0 keeps the fold's centres (the run without an
    ensemble), and each member's model starts from its own (checked through the saved weights of a
    one-epoch run with the prototypes frozen)."""
    from recomil.pipeline import prototypes_stage, train_stage

    monkeypatch.chdir(demo_project)
    base = dict(SMALL, epochs=1, warmup_epochs=1, freeze_protos_epochs=1, wandb_mode="disabled", bootstrap=0,
                threads=1, ensemble=3, save_policy="last")
    before = load_prototypes(("high", "low"), 0)
    p = make_params({**base, "ensemble_protos": "resample"})
    for scale in ("high", "low"):
        prototypes_stage.run_prototypes(p, scale)
    own = [load_prototypes(("high", "low"), 0, member=m) for m in range(3)]
    for s in ("high", "low"):
        assert np.array_equal(own[0][s]["centres"], before[s]["centres"])  # member 0: the fold's centres
        assert np.array_equal(own[1][s]["mean"], before[s]["mean"])  # same training slides, same statistics
        assert own[1][s]["centres"].shape == before[s]["centres"].shape
        assert not np.allclose(own[1][s]["centres"], before[s]["centres"])
        assert not np.allclose(own[2][s]["centres"], own[1][s]["centres"])
        assert own[1][s]["counts"].sum() == before[s]["counts"].sum()  # every training patch counted once
    train_stage.run_train(p, progress=False)
    for m, name in enumerate(["best.pt", "best_m1.pt", "best_m2.pt"]):
        state = torch.load(paths.MODELS / "fold_0" / name, weights_only=True)["state_dict"]
        for s in ("high", "low"):
            assert np.allclose(state[f"branches.{s}.protos"].numpy(), own[m][s]["centres"], atol=1e-6), (name, s)
    # shared (the default): one set per fold, every member starts from it
    shared = make_params({**base, "ensemble_protos": "shared"})
    for scale in ("high", "low"):
        prototypes_stage.run_prototypes(shared, scale)
    assert not list((demo_project / paths.PROTOTYPES / "high").glob("fold_0_m*.npz"))
    with pytest.raises(ValueError, match="fold_0_m1.npz: prototype file missing"):
        load_prototypes(("high",), 0, member=1)
    train_stage.run_train(shared, progress=False)
    state = torch.load(paths.MODELS / "fold_0" / "best_m2.pt", weights_only=True)["state_dict"]
    assert np.allclose(state["branches.high.protos"].numpy(), before["high"]["centres"], atol=1e-6)


@pytest.mark.parametrize(("min_delta", "by_selection", "by_score"), [(0.0, (20, 20), (7, 7)), (0.05, (6, 10), (6, 7))])
def test_patience_on_score_stops_a_saturated_run_while_ties_still_go_to_the_lower_validation_loss(
        min_delta, by_selection, by_score):
    """Validation AUC saturates at epoch 3 while the validation loss keeps creeping down. ``selection``
    (default): each tie-break resets the patience, the run goes on to the last epoch; ``score``: the
    tie-breaks still select (the lowest loss so far) but the patience runs from the last score gain, so
    the run stops ``patience`` epochs after it. A gain within ``min_delta`` (epoch 6) is selected by its
    lower loss but is no gain: with ``score`` it does not reset the patience either."""
    from recomil.training.selection import selection_step

    scores = [0.5, 0.8, 1.0] + [1.0] * 17
    losses = [0.9, 0.6, 0.4] + [0.4 - 0.01 * k for k in range(1, 18)]
    if min_delta:
        scores[5] = 1.0 + min_delta / 2  # a gain no larger than min_delta: selected (lower loss), not a reset

    def run(patience_on: str) -> tuple[int, int]:
        p = make_params({"patience": 4, "patience_on": patience_on, "min_delta": min_delta, "epochs": 20,
                         "early_stop_after_warmup": False})
        state = {"best_score": -np.inf, "best_val_loss": np.inf, "best_epoch": 0, "stale": 0, "stopped_early": False}
        for e, (s, v) in enumerate(zip(scores, losses), start=1):
            selection_step(state, p, p.save_policy, e, s, v, 1)
            if state["stopped_early"]:
                return state["best_epoch"], e
        return state["best_epoch"], len(scores)

    assert run("selection") == by_selection
    assert run("score") == by_score  # the score's last gain at epoch 3; epochs 4-7 count (4 of patience)
    with pytest.raises(ConfigError, match="patience_on"):
        make_params({"patience_on": "loss"})
