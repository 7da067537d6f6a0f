"""What training did to the slides' probabilities, read from the vs_original records: writes ``train_drift.md``.

Usage::

    python benchmarks/train_drift.py                                  # every cohort with recomil records
    python benchmarks/train_drift.py --cohorts reprare-1 reprare-2 --work ../scratch/vsw

For each recomil run (``results/vs_original/<cohort>/recomil/seed<N>.json``) it reads the per-epoch
training log beside it (``seed<N>_train_log/fold_0.csv``) and compares the first epoch (the model the
instance heads' fit made; the warm-up's first, smallest learning rate) with the last: the training
slides' cross-entropy (``ce``) and the mean probability of the true class on the training slides of each
class (``train_ptrue_<class>``); with the run's test AUC and accuracy at 0.5 and, where the run's log
says it, the high scale's cross-fitted top-patch AUC of the fit (the start it took). No training is run.

With ``--work`` (the folder ``vs_original.py --work`` wrote its cohorts to), each generated cohort's
ground truth (``ground_truth/<slide>_high.npy``, one 0/1 per patch) gives the tumour share of its
training positives and how many of them hold fewer tumour patches than the instance-level loss labels
positive (``inst_top_p`` of their patches, the params' default unless ``--inst-top-p``).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from recomil.config import Params  # noqa: E402

RECORDS = HERE / "results" / "vs_original"
OUT = HERE / "train_drift.md"
FIT = re.compile(r"instance head \(high\) fitted by mi-SVM .*?\(start: (\w+), cross-fitted top-patch AUC "
                 r"\(\d+ folds\): novelty ([\d.]+), bags ([\d.]+)")


def run_drift(record: Path) -> dict[str, Any] | None:
    """One run's first and last epoch (None when its training log is missing)."""
    rec = json.loads(record.read_text())
    log = record.with_name(f"{record.stem}_train_log") / "fold_0.csv"
    if not log.is_file():
        return None
    with log.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    out: dict[str, Any] = {"seed": rec["seed"], "auc": rec["auc"], "acc": rec["acc"], "epochs": len(rows),
                           "ce_first": float(first["ce"]), "ce_last": float(last["ce"])}
    for key in first:
        if key.startswith("train_ptrue_"):
            cls = key[len("train_ptrue_"):]
            out[f"ptrue_{cls}_first"], out[f"ptrue_{cls}_last"] = float(first[key]), float(last[key])
    text = record.with_name(f"{record.stem}_log.txt")
    m = FIT.search(text.read_text()) if text.is_file() else None
    out["fit_auc"] = float(m.group(2) if m.group(1) == "novelty" else m.group(3)) if m else None
    return out


def tumour_shares(cohort: Path, top_p: float) -> dict[str, float] | None:
    """Tumour share of the cohort's training positives (None without its ground truth)."""
    truth = cohort / "ground_truth"
    slides = sorted((cohort / "train" / "tumor").glob("*_high_feature_ctrans.pkl"))
    shares, counts, sizes = [], [], []
    for s in slides:
        gt = truth / f"{s.name[:-len('_high_feature_ctrans.pkl')]}_high.npy"
        if not gt.is_file():
            return None
        g = np.load(gt, allow_pickle=False)
        shares.append(float(g.mean()))
        counts.append(int(g.sum()))
        sizes.append(len(g))
    if not shares:
        return None
    below = [c < max(1, int(np.floor(top_p * n))) for c, n in zip(counts, sizes)]  # the loss's k per slide
    return {"positives": len(shares), "share_median": statistics.median(shares),
            "tumour_patches_median": statistics.median(counts), "patches_median": statistics.median(sizes),
            "below_top_p": sum(below) / len(below)}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _mean_sd(x: np.ndarray) -> str:
    return f"{x.mean():.3f}" + (f" ± {x.std(ddof=1):.3f}" if len(x) > 1 else "")


def cohort_rows(cohort: str, records: Path) -> list[dict[str, Any]]:
    runs = [run_drift(f) for f in sorted((records / cohort / "recomil").glob("seed*.json"))]
    return sorted((r for r in runs if r is not None), key=lambda r: r["seed"])


def report(cohorts: list[str], records: Path, work: Path | None, top_p: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    lines = ["# What training did to the slides' probabilities", "",
             f"`python benchmarks/train_drift.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
             f"(commit {commit}; from the recomil records of [vs_original.md](vs_original.md), no training run).",
             "First epoch: the model the instance heads' fit made, at the warm-up's smallest learning rate; last:",
             "the run's last epoch. `ce`: the training slides' cross-entropy; P(true): the mean probability of the",
             "true class on the training slides of that class. Fit: the high scale's cross-fitted top-patch AUC of",
             "the start the fit took.", "",
             "| cohort | runs | ce rose in | ce first → last (median) | negatives' P(true) first → last (median) "
             "| test AUC | accuracy at 0.5 | tumour share of the training positives (median) | positives with fewer "
             f"tumour patches than inst_top_p = {top_p:g} of theirs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    details = []
    for c in cohorts:
        rows = cohort_rows(c, records)
        if not rows:
            continue
        rose = sum(r["ce_last"] > r["ce_first"] for r in rows)
        neg = "normal" if "ptrue_normal_first" in rows[0] else "0"
        negs = (f"{_median(rows, f'ptrue_{neg}_first'):.3f} → {_median(rows, f'ptrue_{neg}_last'):.3f}"
                if f"ptrue_{neg}_first" in rows[0] else "–")
        auc = np.array([r["auc"] for r in rows])
        acc = np.array([r["acc"] for r in rows])
        gt = tumour_shares(work / "cohorts" / c, top_p) if work is not None else None
        truth = (f"{gt['share_median']:.4f} ({gt['tumour_patches_median']:g} of {gt['patches_median']:g} patches)",
                 f"{gt['below_top_p']:.0%} of {gt['positives']}") if gt else ("–", "–")
        ce = f"{_median(rows, 'ce_first'):.3f} → {_median(rows, 'ce_last'):.3f}"
        lines.append(f"| {c} | {len(rows)} | {rose} | {ce} | {negs} | {_mean_sd(auc)} | {_mean_sd(acc)} | "
                     f"{truth[0]} | {truth[1]} |")
        for r in rows:
            fit = f"{r['fit_auc']:.3f}" if r["fit_auc"] is not None else "–"
            details.append(f"| {c} | {r['seed']} | {fit} | {r['ce_first']:.3f} → {r['ce_last']:.3f} | "
                           + (f"{r[f'ptrue_{neg}_first']:.2f} → {r[f'ptrue_{neg}_last']:.2f}"
                              if f"ptrue_{neg}_first" in r else "–")
                           + f" | {r['auc']:.3f} | {r['acc']:.3f} | {r['epochs']} |")
    lines += ["", "Per run:", "", "| cohort | seed | fit | ce first → last | negatives' P(true) | test AUC | "
              "accuracy | epochs |", "| --- | --- | --- | --- | --- | --- | --- | --- |", *details, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", nargs="*", help="default: every cohort with recomil records")
    ap.add_argument("--work", type=Path, help="vs_original.py's --work folder (its cohorts' ground truth)")
    ap.add_argument("--inst-top-p", type=float, default=Params().inst_top_p)
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cohorts = args.cohorts or sorted(d.parent.name for d in args.records.glob("*/recomil") if d.is_dir())
    text = report(cohorts, args.records, args.work, args.inst_top_p)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
