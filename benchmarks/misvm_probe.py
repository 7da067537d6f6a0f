"""The closed-form instance head (``inst_init: misvm``) alone, on generated cohorts: how well its top
patch ranks the test slides after each refit, for both starts (``bags``, ``novelty``).

    python benchmarks/misvm_probe.py --cohorts dev768-a devrare-a --refits 1 2 4 6

One scale (``--scale``, high by default), every training slide (no validation split), features
standardised with the training patches' statistics, ``inst_top_p`` 0.01, ``C`` 0.01 (params.yaml's
defaults). No model is trained: this is the starting point that ``inst_init: misvm`` gives the linear
instance head. Cohorts are those of ``vs_original.py`` (generated under ``--work``). Results:
``results/misvm_probe[_low].json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from vs_original import COHORTS  # noqa: E402

from recomil.config import load_params  # noqa: E402
from recomil.data.demo import make_demo  # noqa: E402
from recomil.data.readers import read_bag  # noqa: E402
from recomil.training.instance_init import calibrate_top_patch, cross_fitted_tops, fit_misvm  # noqa: E402


def load(root: Path, scale: str = "high") -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """Standardised training and test bags of a generated cohort, with their labels."""
    train_ids = [s for s in (root / "train_list.txt").read_text().split() if s]
    tr = [read_bag(root / "train" / ("tumor" if s.startswith("tumor") else "normal")
                   / f"{s}_{scale}_feature_ctrans.pkl").features.astype(np.float32) for s in train_ids]
    y = np.array([int(s.startswith("tumor")) for s in train_ids])
    rows = [line.split(",") for line in (root / "test_labels.csv").read_text().split()[1:]]
    te = [read_bag(root / "test" / f"{s}_{scale}_feature_ctrans.pkl").features.astype(np.float32) for s, _ in rows]
    ty = np.array([int(b) for _, b in rows])
    x = np.concatenate(tr)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    return [(b - mu) / sd for b in tr], y, [(b - mu) / sd for b in te], ty


def cohort_root(cohort: str, work: str) -> tuple[Path, Any]:
    """The generated cohort's folder under ``work`` (written when absent) and its params."""
    root = Path(work) / cohort
    p = load_params(HERE.parent / "params.yaml", **COHORTS[cohort])
    if not (root / "test_labels.csv").is_file():
        make_demo(p, root)
    return root, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohorts", nargs="+", default=["dev768-a", "dev768-b", "dev768-c", "dev768-d",
                                                      "devrare-a", "devrare-b"])
    ap.add_argument("--refits", nargs="+", type=int, default=[1, 2, 4, 6])
    ap.add_argument("--work", default="/tmp/recomil-misvm-probe")
    ap.add_argument("--scale", default="high", choices=["high", "low"])
    ap.add_argument("--auto", action="store_true", help="inst_init_start: auto as the trainer runs it, both scales: "
                    "cross-fitted AUC per start, the start chosen, test AUC of each calibrated head and of the "
                    "mean of their top-patch log-odds (results/misvm_probe_auto.json)")
    args = ap.parse_args()
    if args.auto:
        return auto(args)
    out_path = HERE / "results" / ("misvm_probe.json" if args.scale == "high" else f"misvm_probe_{args.scale}.json")
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for cohort in args.cohorts:
        root, p = cohort_root(cohort, args.work)
        tr, y, te, ty = load(root, args.scale)
        row: dict[str, dict[str, float]] = {}
        for start in ("bags", "novelty"):
            for r in args.refits:
                w, b, _ = fit_misvm(tr.__getitem__, y, p.inst_top_p, r, p.inst_init_c, p.inst_init_rows,
                                    np.random.default_rng(0), start=start)
                auc = float(roc_auc_score(ty, [float((x @ w + b).max()) for x in te]))
                row.setdefault(start, {})[str(r)] = round(auc, 3)
                print(f"{cohort} {args.scale} start {start} refits {r}: test AUC of the top patch {auc:.3f}",
                      flush=True)
        results[cohort] = row
        out_path.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| cohort | " + " | ".join(f"{s} {r}" for s in ("bags", "novelty") for r in args.refits) + " |")
    print("|" + " --- |" * (1 + 2 * len(args.refits)))
    for cohort, row in results.items():
        print(f"| {cohort} | " + " | ".join(str(row.get(s, {}).get(str(r), "")) for s in ("bags", "novelty")
                                           for r in args.refits) + " |")


def auto(args: argparse.Namespace) -> None:
    """``inst_init_start: auto`` per scale, as :func:`recomil.training.instance_init.init_instance_heads`
    runs it (3 folds, seed 0), and the two scales' calibrated top-patch log-odds averaged."""
    out_path = HERE / "results" / "misvm_probe_auto.json"
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for cohort in args.cohorts:
        root, p = cohort_root(cohort, args.work)
        row: dict[str, Any] = {}
        logits = []
        for scale in ("high", "low"):
            tr, y, te, ty = load(root, scale)
            fit = dict(top_p=p.inst_top_p, refits=p.inst_init_refits, c=p.inst_init_c, max_rows=p.inst_init_rows)
            cv = {s: cross_fitted_tops(tr.__getitem__, y, p.inst_init_folds, 0, start=s, **fit)[0]
                  for s in ("novelty", "bags")}
            cv_auc = {s: float(roc_auc_score(y, t)) for s, t in cv.items()}
            start = max(cv_auc, key=lambda s: cv_auc[s])
            w, b, _ = fit_misvm(tr.__getitem__, y, rng=np.random.default_rng(0), start=start, calibrate=False, **fit)
            w, b = calibrate_top_patch(w.astype(np.float64), b, cv[start], y)
            top = np.array([float((x @ w).max()) + b for x in te])
            logits.append(top)
            row[scale] = {"cv_auc": {s: round(a, 3) for s, a in cv_auc.items()}, "start": start,
                          "test_auc": round(float(roc_auc_score(ty, top)), 3), "platt_norm": float(np.linalg.norm(w))}
            print(cohort, scale, row[scale], flush=True)
        row["test_auc_mean_logodds"] = round(float(roc_auc_score(ty, (logits[0] + logits[1]) / 2)), 3)
        print(cohort, "both scales:", row["test_auc_mean_logodds"], flush=True)
        results[cohort] = row
        out_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
