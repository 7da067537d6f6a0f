"""benchmarks/vs_original.py: its report arithmetic, the skip without a checkout, and that the
README's `original` configuration is the one it runs."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import vs_original as vs  # noqa: E402


def test_readme_original_configuration_is_the_benchmarks():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Coming from the original"):]
    block = block[:block.index("```", block.index("```bash") + 7)]
    pairs = dict(re.findall(r"-S (\w+)=(\S+)", block))
    expected = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in vs.ORIGINAL.items()}
    assert {k: v.replace("0.0", "0") for k, v in expected.items()} == pairs


def _rec(program, seed, auc, secs):
    return {"cohort": "c128-a", "program": program, "seed": seed, "auc": auc, "acc": 0.8, "balanced_acc": 0.8,
            "epochs_run": 20, "epoch_seconds": secs, "seconds": 100.0, "peak_rss_mb": 500.0}


def test_report_pairs_by_seed_and_gives_epoch_ratios():
    recs = [_rec("original", 1, 0.90, 10.0), _rec("original", 2, 0.80, 10.0),
            _rec("recomil", 1, 0.95, 5.0), _rec("recomil", 2, 0.81, 4.0)]
    text = vs.report(recs)
    row = next(line for line in text.splitlines() if line.startswith("| c128-a | recomil |"))
    assert "+0.030 ± 0.020 (n=2)" in row  # diffs 0.05 and 0.01
    assert "| 0.45 |" in row  # epoch ratios 0.5 and 0.4
    assert "0.880 ± 0.099" in row  # mean ± sample sd of 0.95, 0.81


def test_without_a_checkout_the_originals_units_are_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vs, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(vs, "REPORT", tmp_path / "report.md")
    monkeypatch.setattr(sys, "argv", ["vs_original.py", "--programs", "original", "--cohorts", "c128-a",
                                      "--seeds", "1", "--work", str(tmp_path / "w")])
    vs.main()
    assert "no --original checkout given" in capsys.readouterr().err
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "w").exists()


def test_a_folder_that_is_not_the_original_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vs_original.py", "--original", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a checkout of zsszc/ReCo-MIL"):
        vs.main()


def test_a_classic_set_is_written_in_the_originals_layout_with_a_stratified_test_split(tmp_path, monkeypatch):
    import numpy as np

    from recomil.data.readers import _read_pkl

    src = tmp_path / "toy"
    (src / "features").mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [1] * 10 + [0] * 20
    bags = {}
    for i in range(len(labels)):
        bags[f"b{i:02d}"] = rng.normal(size=(int(rng.integers(2, 6)), 7)).astype(np.float32)
        np.save(src / "features" / f"b{i:02d}.npy", bags[f"b{i:02d}"])
    (src / "labels.csv").write_text("slide_id,label\n" + "".join(f"b{i:02d},{y}\n" for i, y in enumerate(labels)))
    monkeypatch.setitem(vs.COHORTS, "toy", {"classic": "toy", "test_share": 0.3, "split_seed": 0})
    monkeypatch.setattr(vs, "DATA_ROOT", [tmp_path])
    root = vs.make_cohort("toy", tmp_path / "work")
    assert vs.cohort_dim("toy") == 7
    test = dict(line.split(",") for line in (root / "test_labels.csv").read_text().split()[1:])
    assert sorted(test.values()).count("1") == 3 and sorted(test.values()).count("0") == 6  # 30 % of each class
    train = (root / "train_list.txt").read_text().split()
    assert len(train) == 21 and not {t.split("_", 1)[1] for t in train} & {t.split("_", 1)[1] for t in test}
    assert {t.split("_")[0] for t in train} == {"tumor", "normal"}
    for name in train[:3]:
        sid, y = name.split("_", 1)[1], name.split("_")[0]
        for scale in ("high", "low"):
            feats = _read_pkl(root / "train" / y / f"{name}_{scale}_feature_ctrans.pkl").features
            assert np.array_equal(feats, bags[sid])  # the same features at both scales
        assert (y == "tumor") == (labels[int(sid[1:])] == 1)
    assert vs.make_cohort("toy", tmp_path / "work") == root  # written once


#: a few epochs of a small model: the slow tests' units train in seconds
TINY_TRAINING = {"epochs": 3, "warmup_epochs": 1, "freeze_protos_epochs": 1, "num_protos_high": 8,
                 "num_protos_low": 8}


def _tiny_cohort(tmp_path, monkeypatch) -> None:
    """A tiny generated cohort ``tiny`` and unit records under ``tmp_path``."""
    monkeypatch.setattr(vs, "CACHE", tmp_path / "cache")
    monkeypatch.setitem(vs.COHORTS, "tiny", {"demo_seed": 5, "demo_feat_dim": 16, "demo_train_slides": 16,
                                             "demo_test_slides": 8, "demo_min_patches": 20, "demo_max_patches": 40,
                                             "demo_tumour_min": 0.1, "demo_tumour_max": 0.3})


@pytest.mark.slow
def test_an_ensemble_unit_keeps_each_members_test_probabilities_and_the_report_curves_them(tmp_path, monkeypatch):
    # a tiny generated cohort and a 2-member ensemble trained for a few epochs, through the benchmark's
    # own child process: the ensemble's test probability is the mean of the members' recorded ones
    _tiny_cohort(tmp_path, monkeypatch)
    monkeypatch.setitem(vs.VARIANTS, "tiny-ens2", {"ensemble": 2, **TINY_TRAINING})
    recs = [vs.run_unit("tiny", "tiny-ens2", seed, tmp_path / "work", None, 1) for seed in (1, 2)]
    for rec in recs:
        members = np.array(rec["member_test_prob"])
        assert members.shape == (2, 8)
        assert not np.allclose(members[0], members[1])  # two models, not one twice
        np.testing.assert_allclose(members.mean(0), rec["test_prob"], atol=2e-6)
    for seed in (1, 2):  # the run's own output is kept beside the record: what was fitted, each epoch
        log = (vs.CACHE / "tiny" / "tiny-ens2" / f"seed{seed}_log.txt").read_text()
        assert "instance head (high) fitted by mi-SVM" in log and "epoch 1/" in log
    rows = [line for line in vs.report(recs).splitlines() if line.startswith("| tiny | tiny-ens2 |")]
    from sklearn.metrics import roc_auc_score
    m1 = [roc_auc_score(r["test_labels"], r["member_test_prob"][0]) for r in recs]
    m2 = [r["auc"] for r in recs]
    assert [row.split(" | ")[3] for row in rows] == ["1", "2"]
    assert f"{np.mean(m1):.3f} ± {np.std(m1, ddof=1):.3f}" in rows[0]
    assert f"{np.mean(m2):.3f} ± {np.std(m2, ddof=1):.3f}" in rows[1]


@pytest.mark.slow
def test_a_grown_ensemble_equals_the_ensemble_trained_whole(tmp_path, monkeypatch):
    # ensemble 3 grown from a recorded ensemble of 2 (only member 2 trained) against ensemble 3 trained
    # in one run: the members, the ensemble's probability and its AUC are the same
    _tiny_cohort(tmp_path, monkeypatch)
    monkeypatch.setitem(vs.VARIANTS, "tiny-ens2", {"ensemble": 2, **TINY_TRAINING})
    monkeypatch.setitem(vs.VARIANTS, "tiny-ens3", {"ensemble": 3, **TINY_TRAINING})
    monkeypatch.setitem(vs.VARIANTS, "tiny-ens3-grown", {"ensemble": 3, **TINY_TRAINING})
    monkeypatch.setitem(vs.GROWS, "tiny-ens3-grown", "tiny-ens2")
    with pytest.raises(SystemExit, match="run --programs tiny-ens2"):  # nothing to grow from yet
        vs.run_unit("tiny", "tiny-ens3-grown", 1, tmp_path / "work", None, 1)
    base = vs.run_unit("tiny", "tiny-ens2", 1, tmp_path / "work", None, 1)
    grown = vs.run_unit("tiny", "tiny-ens3-grown", 1, tmp_path / "work", None, 1)
    whole = vs.run_unit("tiny", "tiny-ens3", 1, tmp_path / "work", None, 1)
    assert grown["members_trained"] == [2, 3] and len(grown["members_epochs_run"]) == 1
    assert grown["member_test_prob"][:2] == base["member_test_prob"]
    np.testing.assert_allclose(grown["member_test_prob"], whole["member_test_prob"], atol=2e-6)
    np.testing.assert_allclose(grown["test_prob"], whole["test_prob"], atol=2e-6)
    assert grown["auc"] == pytest.approx(whole["auc"])
    assert grown["train_seconds"] > base["train_seconds"]


def test_a_record_is_derived_from_a_run_that_differs_only_in_when_it_stops(tmp_path, monkeypatch):
    """``derive``: session 20's rule (every selected epoch resets the patience) ran on while the validation
    loss crept down; the defaults (``patience_on: score``) replayed on its logged epochs stop at epoch 23.
    Where they select the epoch the run selected, the record is that run's, with the epochs up to the stop;
    where they select another, nothing is derived."""
    import csv
    import json

    monkeypatch.setattr(vs, "CACHE", tmp_path)

    def write(seed: int, losses: list[float], best: int) -> None:
        folder = tmp_path / "c" / "recomil-s20"
        (folder / f"seed{seed}_train_log").mkdir(parents=True)
        with (folder / f"seed{seed}_train_log" / "fold_0.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["epoch", "loss", "val_auc", "val_acc", "val_loss", "epoch_seconds"])
            w.writeheader()
            for e, v in enumerate(losses, start=1):
                w.writerow({"epoch": e, "loss": 0.5, "val_auc": 1.0, "val_acc": 1.0, "val_loss": v,
                            "epoch_seconds": 10.0})
        (folder / f"seed{seed}.json").write_text(json.dumps(
            {"cohort": "c", "program": "recomil-s20", "seed": seed, "auc": 0.9, "best_epoch": best,
             "epochs_run": len(losses), "train_seconds": 10.0 * len(losses), "seconds": 10.0 * len(losses) + 60,
             "epoch_seconds": 10.0, "commit": "abc", "params_sha256": "def"}))

    flat = [0.5] * 12 + [0.3] + [0.31] * 10          # selected 13 either way; session 20 stopped at 23 too
    creeping = [0.5] * 12 + [0.3 - 0.001 * k for k in range(38)]  # session 20 selects 50, the defaults 23
    write(1, flat, 13)
    write(2, creeping, 50)
    assert vs.derive("c", "recomil-s20", 1).startswith("derived: selected epoch 13, 23 epochs")
    rec = json.loads((tmp_path / "c" / "recomil" / "seed1.json").read_text())
    assert (rec["program"], rec["auc"], rec["best_epoch"], rec["epochs_run"], rec["train_seconds"]) == \
        ("recomil", 0.9, 13, 23, 230.0)
    assert rec["derived_from"]["program"] == "recomil-s20" and rec["seconds"] == 290.0
    assert "replayed from recomil-s20" in vs.code_of([rec])
    assert "needs a run of its own" in vs.derive("c", "recomil-s20", 2)
    assert not (tmp_path / "c" / "recomil" / "seed2.json").exists()
