"""The closed-form instance head (``inst_init: misvm``) alone, on generated cohorts: how well its top
patch ranks the test slides after each refit, for both starts (``bags``, ``novelty``).

    python benchmarks/misvm_probe.py --cohorts dev768-a devrare-a --refits 1 2 4 6

High scale only, every training slide (no validation split), features standardised with the training
patches' statistics, ``inst_top_p`` 0.01, ``C`` 0.01 (params.yaml's defaults). No model is trained: this
is the starting point that ``inst_init: misvm`` gives the linear instance head. Cohorts are those of
``vs_original.py`` (generated under ``--work``). Results: ``results/misvm_probe.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from vs_original import COHORTS  # noqa: E402

from recomil.config import load_params  # noqa: E402
from recomil.data.demo import make_demo  # noqa: E402
from recomil.data.readers import read_bag  # noqa: E402
from recomil.training.instance_init import fit_misvm  # noqa: E402


def load(root: Path) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """Standardised high-scale training and test bags of a generated cohort, with their labels."""
    train_ids = [s for s in (root / "train_list.txt").read_text().split() if s]
    tr = [read_bag(root / "train" / ("tumor" if s.startswith("tumor") else "normal")
                   / f"{s}_high_feature_ctrans.pkl").features.astype(np.float32) for s in train_ids]
    y = np.array([int(s.startswith("tumor")) for s in train_ids])
    rows = [line.split(",") for line in (root / "test_labels.csv").read_text().split()[1:]]
    te = [read_bag(root / "test" / f"{s}_high_feature_ctrans.pkl").features.astype(np.float32) for s, _ in rows]
    ty = np.array([int(b) for _, b in rows])
    x = np.concatenate(tr)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    return [(b - mu) / sd for b in tr], y, [(b - mu) / sd for b in te], ty


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohorts", nargs="+", default=["dev768-a", "dev768-b", "dev768-c", "dev768-d",
                                                      "devrare-a", "devrare-b"])
    ap.add_argument("--refits", nargs="+", type=int, default=[1, 2, 4, 6])
    ap.add_argument("--work", default="/tmp/recomil-misvm-probe")
    args = ap.parse_args()
    out_path = HERE / "results" / "misvm_probe.json"
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for cohort in args.cohorts:
        root = Path(args.work) / cohort
        p = load_params(HERE.parent / "params.yaml", **COHORTS[cohort])
        if not (root / "test_labels.csv").is_file():
            make_demo(p, root)
        tr, y, te, ty = load(root)
        row: dict[str, dict[str, float]] = {}
        for start in ("bags", "novelty"):
            for r in args.refits:
                w, b, _ = fit_misvm(tr.__getitem__, y, p.inst_top_p, r, p.inst_init_c, p.inst_init_rows,
                                    np.random.default_rng(0), start=start)
                auc = float(roc_auc_score(ty, [float((x @ w + b).max()) for x in te]))
                row.setdefault(start, {})[str(r)] = round(auc, 3)
                print(f"{cohort} start {start} refits {r}: test AUC of the top patch {auc:.3f}", flush=True)
        results[cohort] = row
        out_path.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| cohort | " + " | ".join(f"{s} {r}" for s in ("bags", "novelty") for r in args.refits) + " |")
    print("|" + " --- |" * (1 + 2 * len(args.refits)))
    for cohort, row in results.items():
        print(f"| {cohort} | " + " | ".join(str(row.get(s, {}).get(str(r), "")) for s in ("bags", "novelty")
                                           for r in args.refits) + " |")


if __name__ == "__main__":
    main()
