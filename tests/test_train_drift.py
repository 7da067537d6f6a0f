"""benchmarks/train_drift.py: first and last epoch of each recorded run, and the cohorts' tumour shares."""

from __future__ import annotations

import json
import sys

import numpy as np

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import train_drift  # noqa: E402

COLS = "epoch,ce,train_ptrue_normal,train_ptrue_tumor\n"


def _run(root, seed, ce, neg, fit_line=""):
    d = root / "rep" / "recomil"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "auc": 0.9 + seed / 100, "acc": 0.8}))
    (d / f"seed{seed}_train_log").mkdir()
    rows = "".join(f"{e + 1},{c},{n},0.9\n" for e, (c, n) in enumerate(zip(ce, neg)))
    (d / f"seed{seed}_train_log" / "fold_0.csv").write_text(COLS + rows)
    if fit_line:
        (d / f"seed{seed}_log.txt").write_text(fit_line)


def test_the_report_compares_each_runs_first_and_last_epoch_and_the_positives_tumour_against_inst_top_p(tmp_path):
    records = tmp_path / "records"
    _run(records, 1, [0.20, 0.10, 0.30], [0.9, 0.8, 0.7],
         "train: fold 0: instance head (high) fitted by mi-SVM on the 54 training slides (start: bags, "
         "cross-fitted top-patch AUC (3 folds): novelty 0.870, bags 0.930, positives chosen out of part")
    _run(records, 2, [0.20, 0.15], [0.9, 0.95])
    _run(records, 3, [0.10, 0.12], [0.8, 0.7])
    cohort = tmp_path / "work" / "cohorts" / "rep"
    (cohort / "train" / "tumor").mkdir(parents=True)
    (cohort / "ground_truth").mkdir()
    for sid, n, tumour in [("tumor_001", 500, 2), ("tumor_002", 500, 5), ("tumor_003", 300, 9),
                              ("tumor_004", 150, 1)]:
        (cohort / "train" / "tumor" / f"{sid}_high_feature_ctrans.pkl").write_bytes(b"")
        np.save(cohort / "ground_truth" / f"{sid}_high.npy", (np.arange(n) < tumour).astype(np.uint8))
    text = train_drift.report(["rep"], records, tmp_path / "work", 0.01)
    summary, runs = text.split("Per run:")
    row = next(line for line in summary.splitlines() if line.startswith("| rep | 3 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "2"  # the cross-entropy rose in seeds 1 and 3
    assert cells[3] == "0.200 → 0.150"  # medians of (0.2, 0.2, 0.1) and (0.3, 0.15, 0.12)
    assert cells[4] == "0.900 → 0.700"  # medians of (0.9, 0.9, 0.8) and (0.7, 0.95, 0.7)
    assert cells[5] == "0.920 ± 0.010"
    assert cells[7] == "0.0083 (3.5 of 400 patches)"  # shares 0.004, 0.01, 0.03, 0.0067
    assert cells[8] == "25% of 4"  # the loss's k = 5, 5, 3, 1: only tumor_001 (2 < 5) holds fewer
    per_run = [line for line in runs.splitlines() if line.startswith("| rep | ")]
    assert per_run[0].split("|")[3].strip() == "0.930"  # the start the fit took (bags), not novelty
    assert per_run[1].split("|")[3].strip() == "–"  # no log: no fit figure
