"""The closed-form start of linear instance heads (``inst_init: misvm``, issue #31)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from recomil.config import ConfigError, make_params
from recomil.pipeline import paths, train_stage
from recomil.training.instance_init import fit_misvm, init_instance_heads, top_k
from tests.conftest import prepare_demo


def _cohort(seed: int = 0, d: int = 12, slides: int = 24, tumour: int = 5):
    """Bags of 80-120 patches: types shift along dims 1..d-1, tumour patches (positive slides only,
    ``tumour`` each) lie 6 SDs out along dim 0; half the slides positive."""
    rng = np.random.default_rng(seed)
    bags, labels, truth = [], [], []
    for j in range(slides):
        n = int(rng.integers(80, 121))
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 1:] += rng.normal(0, 0.5, size=d - 1).astype(np.float32)  # a slide-wide shift: what bag labels see
        t = np.zeros(n, bool)
        if j % 2:
            t[rng.choice(n, tumour, replace=False)] = True
            x[t, 0] += 6.0
        bags.append(x)
        labels.append(j % 2)
        truth.append(t)
    return bags, np.array(labels), truth


def test_misvm_from_bag_labels_refits_on_the_top_patches_of_positive_slides():
    bags, labels, truth = _cohort()
    w, b, history = fit_misvm(lambda j: bags[j], labels, top_p=0.03, refits=4, c=0.01, max_rows=10**6,
                              rng=np.random.default_rng(0), start="bags", calibrate=False)
    assert w.shape == (12,) and w.dtype == np.float32 and len(history) == 5
    assert abs(w[0]) / np.linalg.norm(w) > 0.9 and w[0] > 0  # the tumour direction
    assert history[-1] == 1.0
    # each positive slide's top patch under the fit is a tumour patch
    for x, lab, t in zip(bags, labels, truth):
        if lab:
            assert t[np.argmax(x @ w + b)]
    # the fit is the refit of the instance loss's rule: reproduce the last refit by hand
    bag_fit = LogisticRegression(C=0.01, max_iter=300).fit(np.concatenate(bags),
                                                             np.concatenate([np.full(len(x), lab) for x, lab in
                                                                             zip(bags, labels)]))
    clf = bag_fit
    for _ in range(4):
        pos = np.concatenate([x[np.argsort(-clf.decision_function(x), kind="stable")[:top_k(len(x), 0.03)]]
                              for x, lab in zip(bags, labels) if lab])
        neg = np.concatenate([x for x, lab in zip(bags, labels) if not lab])
        clf = LogisticRegression(C=0.01, max_iter=300, class_weight="balanced").fit(
            np.concatenate([neg, pos]), np.r_[np.zeros(len(neg)), np.ones(len(pos))])
    assert np.allclose(w, clf.coef_[0], atol=1e-5) and b == pytest.approx(float(clf.intercept_[0]), abs=1e-5)


def test_misvm_without_refits_is_the_bag_label_fit_and_a_row_cap_subsamples():
    bags, labels, _ = _cohort(1)
    w0, b0, h0 = fit_misvm(lambda j: bags[j], labels, 0.03, 0, 0.01, 10**6, np.random.default_rng(0), start="bags",
                           calibrate=False)
    ref = LogisticRegression(C=0.01, max_iter=300).fit(
        np.concatenate(bags), np.concatenate([np.full(len(x), lab) for x, lab in zip(bags, labels)]))
    assert len(h0) == 1 and np.allclose(w0, ref.coef_[0], atol=1e-5)
    w1, _, _ = fit_misvm(lambda j: bags[j], labels, 0.03, 0, 0.01, 500, np.random.default_rng(0), start="bags",
                         calibrate=False)
    assert not np.allclose(w1, w0, atol=1e-3)  # fewer rows: another fit
    assert top_k(50, 0.01) == 1 and top_k(250, 0.01) == 2 and top_k(3, 1.0) == 3


def test_novelty_is_the_mean_distance_to_the_nearest_negative_patches_and_starts_the_refits():
    from sklearn.neighbors import NearestNeighbors

    from recomil.training.instance_init import novelty

    bags, labels, truth = _cohort(2)
    neg = np.concatenate([x for x, lab in zip(bags, labels) if not lab])
    queries = bags[1]
    got = novelty(queries, torch.from_numpy(neg), neighbours=5, chunk=7)
    d, _ = NearestNeighbors(n_neighbors=5).fit(neg).kneighbors(queries)
    assert np.allclose(got, d.mean(1), atol=1e-3)
    assert got[truth[1]].min() > np.median(got)  # tumour patches are unlike every negative patch
    w, b, history = fit_misvm(lambda j: bags[j], labels, 0.03, 2, 0.01, 10**6, np.random.default_rng(0),
                              calibrate=False)
    assert len(history) == 2  # no bag-label fit: the refits only
    pos = np.concatenate([x[np.argsort(-novelty(x, torch.from_numpy(neg), 5), kind="stable")[:top_k(len(x), 0.03)]]
                          for x, lab in zip(bags, labels) if lab])
    clf = LogisticRegression(C=0.01, max_iter=300, class_weight="balanced").fit(
        np.concatenate([neg, pos]), np.r_[np.zeros(len(neg)), np.ones(len(pos))])
    pos = np.concatenate([x[np.argsort(-clf.decision_function(x), kind="stable")[:top_k(len(x), 0.03)]]
                          for x, lab in zip(bags, labels) if lab])
    clf = LogisticRegression(C=0.01, max_iter=300, class_weight="balanced").fit(
        np.concatenate([neg, pos]), np.r_[np.zeros(len(neg)), np.ones(len(pos))])
    assert np.allclose(w, clf.coef_[0], atol=1e-5) and b == pytest.approx(float(clf.intercept_[0]), abs=1e-5)
    assert w[0] / np.linalg.norm(w) > 0.9 and history[-1] == 1.0


def test_the_fit_is_platt_scaled_so_that_a_slides_top_patch_is_its_calibrated_log_odds():
    bags, labels, _ = _cohort(3, tumour=2)
    raw_w, raw_b, _ = fit_misvm(bags.__getitem__, labels, 0.03, 3, 0.01, 10**6, np.random.default_rng(0),
                                calibrate=False)
    w, b, _ = fit_misvm(bags.__getitem__, labels, 0.03, 3, 0.01, 10**6, np.random.default_rng(0))
    a = float(w @ raw_w / (raw_w @ raw_w))
    assert a > 0 and np.allclose(w, a * raw_w, rtol=1e-4, atol=1e-6)  # the patches' order is kept
    tops = np.array([float((x @ w).max()) + b for x in bags])
    # logistic regression with an unpenalised intercept: the mean slide probability is the positive share
    assert float(torch.sigmoid(torch.from_numpy(tops)).mean()) == pytest.approx(labels.mean(), abs=1e-3)
    assert (tops[labels == 1] > 0).mean() > 0.9 and (tops[labels == 0] < 0).mean() > 0.9
    raw_tops = np.array([float((x @ raw_w).max()) + raw_b for x in bags])
    # balanced refits: uncalibrated, most slides' top patch says tumour
    assert float(torch.sigmoid(torch.from_numpy(raw_tops)).mean()) > labels.mean() + 0.2


def test_inst_init_needs_a_linear_head_on_the_input():
    with pytest.raises(ConfigError, match="inst_on: input"):
        make_params({"inst_init": "misvm", "inst_on": "tokens"})
    with pytest.raises(ConfigError, match="inst_init"):
        make_params({"inst_init": "svm"})
    with pytest.raises(ConfigError, match="inst_init_refits"):
        make_params({"inst_init": "misvm", "inst_on": "input", "inst_init_refits": 0})
    make_params({"inst_init": "misvm", "inst_on": "input", "inst_init_refits": 0, "inst_init_start": "bags"})


def _demo_model(p):
    """The demo cohort prepared for ``p`` (ingest, split, prototypes) and a model built as the trainer
    builds it: ``(model, the fold's training BagSet, the fold's split, the prototypes)``."""
    from recomil.data.store import FeatureStore
    from recomil.model.factory import build_model_from_prototypes
    from recomil.training.bags import BagSet
    from recomil.training.trainer import model_params

    prepare_demo(p)
    store = FeatureStore(paths.STORE)
    split = json.loads(paths.SPLIT.read_text())["folds"][0]
    protos = train_stage.load_prototypes(store.scales, 0)
    mp = model_params(p, store)
    model = build_model_from_prototypes(mp, protos)
    return model, BagSet(store, split["train"], mp.scales), split, protos


def test_training_starts_from_the_misvm_fit_of_the_training_slides(project, tiny_params, capsys):
    """The heads hold the fit of the fold's training slides, standardised as the model sees them, before
    the first step; the trainer says so and trains from there."""
    p = dataclasses.replace(tiny_params, inst_on="input", inst_init="misvm", instance_stream=True, epochs=1,
                            inst_init_start="bags", inst_init_folds=0)
    model, train, split, protos = _demo_model(p)
    history = init_instance_heads(model, train, p, 0, "fold 0", log=lambda line: None)
    assert set(history) == {"high", "low"}
    rng = np.random.default_rng(0)  # one generator for the scales in turn (the parts of out-of-part picking)
    for scale in ("high", "low"):
        mean, std = protos[scale]["mean"], np.maximum(protos[scale]["std"], 1e-6)
        bags = [(train.bag(j)[scale].numpy() - mean) / std for j in range(len(train))]
        w, b, _ = fit_misvm(bags.__getitem__, train.labels, p.inst_top_p, p.inst_init_refits, p.inst_init_c,
                            p.inst_init_rows, rng, start=p.inst_init_start,
                            pick_folds=p.inst_init_pick_folds)
        head = model.branches[scale].instance_head
        assert np.allclose(head.weight.detach().numpy()[0], w, atol=1e-4)
        assert float(head.bias.detach()) == pytest.approx(b, abs=1e-4)
    train_stage.run_train(p, progress=False)
    err = capsys.readouterr().err
    assert (f"instance head (high) fitted by mi-SVM on the {len(split['train'])} training slides (start: bags, "
            f"positives chosen out of part (3 parts))") in err
    assert "instance head (low)" in err
    # auto: per scale, the start whose cross-fitted fits rank the held-out training slides best
    train_stage.run_train(dataclasses.replace(p, inst_init_start="auto", inst_init_folds=3), progress=False)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "fitted by mi-SVM" in ln]
    assert len(lines) == 2
    for line in lines:
        found = re.search(r"start: (\w+), cross-fitted top-patch AUC \(3 folds\): novelty ([0-9.]+), "
                          r"bags ([0-9.]+)", line)
        assert found, line
        aucs = {"novelty": float(found[2]), "bags": float(found[3])}
        assert found[1] == max(aucs, key=lambda k: (aucs[k], k == "novelty"))


def test_cross_fitting_scores_each_slide_by_a_fit_that_never_saw_it_and_calibrates_a_memorised_fit_flat():
    """Pure noise, more dimensions than a positive slide's top patches: every fit ranks its own slides
    perfectly, the cross-fitted scores rank them at chance, and the head calibrated on them is nearly flat."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from recomil.training.instance_init import calibrate_top_patch, cross_fitted_tops

    rng = np.random.default_rng(5)
    bags = [rng.normal(size=(int(rng.integers(20, 40)), 64)).astype(np.float32) for _ in range(30)]
    labels = np.array([j % 2 for j in range(30)])
    fit = dict(top_p=0.05, refits=2, c=1.0, max_rows=10**6, start="bags")
    w, b, history = fit_misvm(bags.__getitem__, labels, rng=np.random.default_rng(0), calibrate=False, **fit)
    assert history[-1] > 0.95  # memorised
    tops, fits = cross_fitted_tops(bags.__getitem__, labels, 3, 11, **fit)
    expected = np.zeros(30)
    for k, (rest, part) in enumerate(StratifiedKFold(3, shuffle=True, random_state=11).split(np.zeros(30), labels)):
        wk, bk, _ = fit_misvm(lambda j, rest=rest: bags[rest[j]], labels[rest], rng=np.random.default_rng(11 + k),
                              calibrate=False, **fit)
        expected[part] = [float((bags[j] @ wk).max()) + bk for j in part]
    assert np.allclose(tops, expected, atol=1e-5)
    assert roc_auc_score(labels, tops) < 0.75
    cal_w, _ = calibrate_top_patch(w.astype(np.float64), b, tops, labels)
    own_w, _ = calibrate_top_patch(w.astype(np.float64), b,
                                   np.array([float((x @ w).max()) + b for x in bags]), labels)
    assert np.linalg.norm(cal_w) < 0.3 * np.linalg.norm(own_w)


def test_refits_stop_when_the_chosen_patches_repeat_with_the_fit_they_would_reach():
    """mi-SVM's rule: once a refit chooses the positives of the refit before, every later fit is that one:
    the loop stops there, at most ``refits`` fits, and the head is the fixed point."""
    bags, labels, _ = _cohort(4, tumour=3)
    w, b, history = fit_misvm(bags.__getitem__, labels, 0.03, 30, 0.01, 10**6, np.random.default_rng(0),
                              calibrate=False)
    assert 1 <= len(history) < 30
    neg = np.concatenate([x for x, lab in zip(bags, labels) if not lab])

    def refit(score):
        pos = np.concatenate([x[np.argsort(-score(x), kind="stable")[:top_k(len(x), 0.03)]]
                              for x, lab in zip(bags, labels) if lab])
        return LogisticRegression(C=0.01, max_iter=300, class_weight="balanced").fit(
            np.concatenate([neg, pos]), np.r_[np.zeros(len(neg)), np.ones(len(pos))])

    clf = refit(lambda x: x @ w + b)  # one more refit from the head changes nothing
    assert np.allclose(clf.coef_[0], w, atol=1e-5) and float(clf.intercept_[0]) == pytest.approx(b, abs=1e-5)
    short, _, h = fit_misvm(bags.__getitem__, labels, 0.03, 1, 0.01, 10**6, np.random.default_rng(0),
                            calibrate=False)
    assert len(h) == 1
    if len(history) > 2:  # the loop did not stop after the first fit for no reason
        assert not np.allclose(short, w, atol=1e-3)


def test_out_of_part_picking_chooses_each_slides_positives_with_a_fit_that_left_them_out():
    """``pick_folds``: positive slides dealt into parts by the fit's rng; each round one class-balanced
    regression per part on every *other* part's positives (and all negative patches) chooses that part's
    slides' next positives; at the cap the last parts' fits choose once more and one regression on every
    slide's final positives is the fit. Reproduced by hand for two rounds."""
    bags, labels, _ = _cohort(2)
    w, b, history = fit_misvm(bags.__getitem__, labels, 0.03, 2, 0.01, 10**6, np.random.default_rng(5),
                              start="bags", calibrate=False, pick_folds=2)
    rng = np.random.default_rng(5)
    positive = np.flatnonzero(labels == 1)
    part = np.zeros(len(labels), dtype=int)
    part[positive[rng.permutation(len(positive))]] = np.arange(len(positive)) % 2
    neg = np.concatenate([x for x, lab in zip(bags, labels) if not lab])

    def balanced(pos):
        return LogisticRegression(C=0.01, max_iter=300, class_weight="balanced").fit(
            np.concatenate([neg, pos]), np.r_[np.zeros(len(neg)), np.ones(len(pos))])

    def choose(score):
        return {j: np.sort(np.argsort(-score(j, bags[j]), kind="stable")[:top_k(len(bags[j]), 0.03)]) for j in positive}

    bag_fit = LogisticRegression(C=0.01, max_iter=300).fit(
        np.concatenate(bags), np.concatenate([np.full(len(x), lab) for x, lab in zip(bags, labels)]))
    chosen = choose(lambda j, x: bag_fit.decision_function(x))
    for _ in range(2):
        fits = [balanced(np.concatenate([bags[j][c] for j, c in chosen.items() if part[j] != q])) for q in range(2)]
        chosen = choose(lambda j, x, fits=fits: fits[part[j]].decision_function(x))
    final = balanced(np.concatenate([bags[j][c] for j, c in chosen.items()]))
    assert len(history) == 2  # the bag-label fit's and the final fit's
    assert np.allclose(w, final.coef_[0], atol=1e-5) and b == pytest.approx(float(final.intercept_[0]), abs=1e-5)
    in_sample, _, _ = fit_misvm(bags.__getitem__, labels, 0.03, 2, 0.01, 10**6, np.random.default_rng(5),
                                start="bags", calibrate=False)
    assert not np.allclose(in_sample, w, atol=1e-3)


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_out_of_part_picking_finds_the_shared_direction_where_in_sample_picking_keeps_its_first_guess(seed):
    """300 dimensions, 15 positive slides with 4 tumour patches each, a slide-wide shift that the bag
    labels fit: the in-sample refits settle on the bag-label fit's picks (a few hundred positives in 300
    dimensions: each fit can score its own positives high); fits that never saw a slide's positives
    choose that slide's tumour patches, and the head turns to the tumour's direction."""
    bags, labels, truth = _cohort(seed, d=300, slides=30, tumour=4)

    def found(pick_folds):
        w, b, _ = fit_misvm(bags.__getitem__, labels, 0.04, 20, 0.01, 10**6, np.random.default_rng(0), start="bags",
                            calibrate=False, pick_folds=pick_folds)
        precision = np.mean([t[np.argsort(-(x @ w))[:top_k(len(x), 0.04)]].mean()
                             for x, lab, t in zip(bags, labels, truth) if lab])
        return w[0] / np.linalg.norm(w), precision

    (cos_in, prec_in), (cos_out, prec_out) = found(1), found(3)
    assert cos_in < 0.3 and prec_in < 0.3
    assert cos_out > 0.7 and prec_out > 0.9


def test_out_of_part_picking_stops_at_a_two_cycle_of_the_picks(monkeypatch):
    """Two positive slides, each with two candidates along u and v (slide A: 5u, 3v; slide B: 5v, 3u):
    each slide's fit sees only the other's pick, so the picks alternate (5u, 5v) -> (3v, 3u) -> (5u, 5v).
    The rounds stop when the picks are those of two rounds before (two regressions a round: two rounds,
    then one fit on the repeated picks), not at the cap."""
    rng = np.random.default_rng(0)
    u, v = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    negatives = [rng.normal(0, 0.5, size=(40, 4)).astype(np.float32) for _ in range(4)]
    a = np.vstack([rng.normal(0, 0.05, size=(8, 4)), [5 * u], [3 * v]]).astype(np.float32)
    b = np.vstack([rng.normal(0, 0.05, size=(8, 4)), [5 * v], [3 * u]]).astype(np.float32)
    bags, labels = [*negatives, a, b], np.array([0, 0, 0, 0, 1, 1])
    fits = []
    real_fit = LogisticRegression.fit

    def counted(self, x, y, *args, **kwargs):
        fits.append(x[y == 1])
        return real_fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", counted)
    fit_misvm(bags.__getitem__, labels, 0.01, 9, 0.01, 10**6, np.random.default_rng(0), start="novelty",
              calibrate=False, history=False, pick_folds=2)
    assert len(fits) == 2 + 2 + 1
    picked = {tuple(np.round(x[0])) for x in fits[:2]}
    assert picked == {tuple(5 * u), tuple(5 * v)}  # round one: the most novel patch of each slide
    assert {tuple(np.round(x[0])) for x in fits[2:4]} == {tuple(3 * u), tuple(3 * v)}  # round two: the others
    assert {tuple(np.round(x)) for x in fits[4]} == {tuple(5 * u), tuple(5 * v)}  # the fit: the repeated picks


def test_pick_folds_must_be_at_least_one():
    with pytest.raises(ConfigError, match="inst_init_pick_folds"):
        make_params({"inst_init_pick_folds": 0})
    assert make_params({"inst_init_pick_folds": 3}).inst_init_pick_folds == 3


@pytest.mark.parametrize("pick_folds", [1, 2])
def test_the_bagged_head_is_the_mean_of_the_cross_fitting_folds_fits_calibrated_out_of_fold(project, tiny_params,
                                                                                             pick_folds):
    from recomil.training.instance_init import calibrate_top_patch, cross_fitted_tops, no_better_than_chance

    p = dataclasses.replace(tiny_params, inst_on="input", inst_init="misvm", instance_stream=True, epochs=1,
                            inst_init_start="novelty", inst_init_folds=3, inst_init_head="bagged",
                            inst_init_pick_folds=pick_folds)
    model, train, _, protos = _demo_model(p)
    lines: list[str] = []
    init_instance_heads(model, train, p, 7, "fold 0", log=lines.append)
    fitted = [ln for ln in lines if "fitted by mi-SVM" in ln]
    assert all("the mean of the 3 folds' fits" in ln for ln in fitted) and len(fitted) == 2
    for scale in ("high", "low"):  # the fit is announced before it starts (minutes on a CPU): not a silent wait
        said = [i for i, ln in enumerate(lines) if f"instance head ({scale})" in ln]
        assert len(said) == 2 and lines[said[0]].startswith(f"train: fold 0: fitting the instance head ({scale})")
    assert all(("positives chosen out of part (2 parts)" in ln) == (pick_folds == 2) for ln in fitted)
    labels = np.asarray(train.labels)
    for scale in ("high", "low"):
        mean, std = protos[scale]["mean"], np.maximum(protos[scale]["std"], 1e-6)
        bags = [(train.bag(j)[scale].numpy() - mean) / std for j in range(len(train))]
        tops, fits = cross_fitted_tops(bags.__getitem__, labels, 3, 7, start="novelty", top_p=p.inst_top_p,
                                       refits=p.inst_init_refits, c=p.inst_init_c, max_rows=p.inst_init_rows,
                                       pick_folds=pick_folds)
        assert len(fits) == 3
        # a warning line for the scale exactly when its out-of-fold tops rank no better than chance
        warned = [ln for ln in lines if ln.startswith("warning:") and f"fit ({scale})" in ln]
        assert len(warned) == int(no_better_than_chance(tops, labels)[0])
        w = np.mean([fw for fw, _ in fits], axis=0)
        b = float(np.mean([fb for _, fb in fits]))
        w, b = calibrate_top_patch(w.astype(np.float64), b, tops, labels)
        if scale == "high":  # the folds' fits rank the held-out slides: the calibrated head is not flat
            assert np.linalg.norm(w) > 0.1
            assert not np.allclose(fits[0][0], fits[1][0], atol=1e-3)  # and they differ: the mean is not any one
        head = model.branches[scale].instance_head
        assert np.allclose(head.weight.detach().numpy()[0], w, atol=1e-4)
        assert float(head.bias.detach()) == pytest.approx(b, abs=1e-4)


def test_a_fit_that_ranks_unseen_slides_no_better_than_chance_is_said():
    """The one-sided Mann-Whitney U test on the out-of-fold top patches: positives above negatives."""
    from recomil.training.instance_init import no_better_than_chance

    # U = 5 of 6 pairs (AUC 0.833); exactly, P(U >= 5) = 2 / C(5, 2) = 0.2 under chance: not distinguishable
    chance, auc, p = no_better_than_chance(np.array([3.0, 2.0, 1.0, 0.0, 2.5]), np.array([1, 1, 0, 0, 0]))
    assert chance and auc == pytest.approx(5 / 6) and p == pytest.approx(0.2)
    labels = np.repeat([1, 0], 10)
    chance, auc, p = no_better_than_chance(np.r_[np.arange(10, 20), np.arange(10)], labels)
    # beyond 8 slides a class, the normal approximation with continuity correction (scipy's 'auto')
    z = (100 - 50 - 0.5) / math.sqrt(10 * 10 * 21 / 12)
    assert not chance and auc == 1.0 and p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    chance, auc, p = no_better_than_chance(np.r_[np.arange(10), np.arange(10, 20)], labels)  # reversed
    assert chance and auc == 0.0 and p > 0.999
    # the level: a 5-of-5 against 4 ranking has p = 1 / C(9, 4) = 0.0079; with level 0.005 it is "chance"
    assert not no_better_than_chance(np.r_[5:10, 0:4], np.r_[[1] * 5, [0] * 4])[0]
    assert no_better_than_chance(np.r_[5:10, 0:4], np.r_[[1] * 5, [0] * 4], level=0.005)[0]


def test_the_trainer_warns_when_the_fit_finds_no_signal_on_unseen_slides(project, tiny_params):
    """With the slide labels swapped, the fit looks for patches that only tumour-free slides hold: none
    exist, the out-of-fold ranking is at or below chance, and the training log says so per scale."""
    p = dataclasses.replace(tiny_params, inst_on="input", inst_init="misvm", instance_stream=True, epochs=1,
                            inst_init_start="novelty", inst_init_folds=3, inst_init_head="bagged")
    model, train, _, _ = _demo_model(p)
    train.labels = 1 - np.asarray(train.labels)
    lines: list[str] = []
    init_instance_heads(model, train, p, 7, "fold 0", log=lines.append)
    warned = [ln for ln in lines if ln.startswith("warning: train: fold 0: the instance head's fit (")]
    assert {ln.split("fit (")[1].split(")")[0] for ln in warned} == {"high", "low"}, lines
    assert all("no better than chance" in ln and "Mann-Whitney p = " in ln for ln in warned)


def test_the_cross_fitting_fits_run_in_threads_with_the_sequential_result():
    """Both starts' cross-fitting fits (two starts x three folds, independent) run in ``workers``
    threads on a CPU, each with one BLAS and one torch thread: the out-of-fold logits and the folds'
    fits are bitwise those of the one-thread sequential path, each start's as ``cross_fitted_tops``
    gives them."""
    from recomil.training.instance_init import cross_fit_starts, cross_fitted_tops

    bags, labels, _ = _cohort(3, d=40, slides=24, tumour=4)
    fit = dict(top_p=0.04, refits=20, c=0.01, max_rows=1500, pick_folds=3)
    runs = [cross_fit_starts(bags.__getitem__, labels, 3, 7, ("novelty", "bags"), workers=w, **fit) for w in (1, 3)]
    for start in ("novelty", "bags"):
        alone = cross_fitted_tops(bags.__getitem__, labels, 3, 7, start=start, **fit)
        for tops, fits in (run[start] for run in runs):
            assert tops.tobytes() == alone[0].tobytes()
            assert all(w.tobytes() == aw.tobytes() and b == ab for (w, b), (aw, ab) in zip(fits, alone[1]))
    assert not np.array_equal(runs[0]["novelty"][0], runs[0]["bags"][0])  # two starts, two cross-fittings
    from sklearn.model_selection import StratifiedKFold

    for start in ("novelty", "bags"):  # each fold's fit as fit_misvm makes it on the other folds (rng seed + k)
        for k, (rest, _) in enumerate(StratifiedKFold(3, shuffle=True, random_state=7).split(bags, labels)):
            w, b, _ = fit_misvm(lambda j, rest=rest: bags[rest[j]], labels[rest], rng=np.random.default_rng(7 + k),
                                start=start, calibrate=False, history=False, **fit)
            assert runs[1][start][1][k][0].tobytes() == w.tobytes() and runs[1][start][1][k][1] == b


def test_the_fit_runs_in_the_trainings_share_of_the_cores(project, tiny_params, monkeypatch):
    """Two queued trainings on a 2-core machine: each one's fit (numpy's BLAS as well as torch) runs in
    its share of the cores, as its epochs do, not in every core (their threads would spin against
    each other), and the process's thread counts are its share afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import recomil.training.trainer as trainer_module

    p = dataclasses.replace(tiny_params, inst_on="input", inst_init="misvm", instance_stream=True, epochs=1,
                            inst_init_start="bags", inst_init_folds=0, threads=1)
    prepare_demo(p)
    seen: list[tuple[int, list[int]]] = []
    real = trainer_module.init_instance_heads

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), [lib["num_threads"] for lib in threadpool_info()
                                               if lib["user_api"] == "blas"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "init_instance_heads", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threadpool_limits(2, user_api="blas"):  # BLAS on both cores, as a process started without a limit
            assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {2}
            train_stage.run_train(p, progress=False)
    finally:
        torch.set_num_threads(before)
    assert seen and all(n == 1 and blas and set(blas) == {1} for n, blas in seen), seen
