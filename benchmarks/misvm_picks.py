"""What the mi-SVM fit picks: the share of tumour patches among each positive slide's chosen patches,
with in-sample and out-of-part picking (``inst_init_pick_folds``), from the generator's ground truth.

    python benchmarks/misvm_picks.py --cohorts rep768-1 --seeds 4 --starts bags --pick-folds 1 3

Per cohort of ``vs_original.py`` and training seed: the unit that ``recipe_epoch0.py`` prepares (fold 0's
training slides, its validation slides left out, features standardised as the model standardises them),
one :func:`recomil.training.instance_init.fit_misvm` on every training slide per start and ``pick_folds``
(params.yaml's ``inst_top_p``, ``inst_init_refits``, ``inst_init_c``, ``inst_init_rows``; no
cross-fitting, no calibration), then: the tumour share of the first positives (the start's picks) and
of the fit's own top ``inst_top_p`` of each positive training slide, the patch-level AUC of tumour
against every other patch of the test slides, and the test slides' AUC of their top patch. No model is
trained. Results: ``results/recipe/picks_s20.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from recipe_epoch0 import prepare  # noqa: E402

from recomil.config import make_params  # noqa: E402
from recomil.data.store import FeatureStore  # noqa: E402
from recomil.model.factory import build_model_from_prototypes  # noqa: E402
from recomil.pipeline import data_stages, paths  # noqa: E402
from recomil.pipeline.train_stage import load_prototypes  # noqa: E402
from recomil.training.bags import BagSet  # noqa: E402
from recomil.training.instance_init import fit_misvm, novelty, top_k  # noqa: E402
from recomil.training.trainer import model_params  # noqa: E402

OUT = HERE / "results" / "recipe" / "picks_s20.json"


def load_unit(unit: Path, scale: str) -> dict[str, Any]:
    """Standardised training and test bags of ``unit`` at ``scale`` with labels and patch ground truth."""
    cwd = os.getcwd()
    os.chdir(unit)
    try:
        params = json.loads(Path("params.json").read_text())
        p = make_params(params)
        store = FeatureStore(paths.STORE)
        split = data_stages.load_split(paths.SPLIT)[0]
        mp = model_params(p, store)
        norm = build_model_from_prototypes(mp, load_prototypes(mp.scales, 0, paths.PROTOTYPES, None)).input_norm[scale]
        truth = Path(params["root_dir_high"]) / "ground_truth"
        out: dict[str, Any] = {"p": p}
        for part in ("train", "test"):
            bags = BagSet(store, split[part], mp.scales)
            with torch.no_grad():
                out[part] = [norm(bags.bag(j)[scale].float()).numpy() for j in range(len(bags))]
            out[f"{part}_labels"] = np.asarray(bags.labels)
            out[f"{part}_truth"] = [np.load(truth / f"{store.slide_ids[i]}_{scale}.npy").astype(bool)
                                    for i in bags.positions]
    finally:
        os.chdir(cwd)
    return out


def precision(bags: list[np.ndarray], labels: np.ndarray, truth: list[np.ndarray], score: Any, top_p: float) -> float:
    """Mean tumour share of each positive slide's top ``top_p`` patches under ``score``."""
    return float(np.mean([t[np.argsort(-score(x), kind="stable")[:top_k(len(x), top_p)]].mean()
                          for x, lab, t in zip(bags, labels, truth) if lab]))


def probe(u: dict[str, Any], start: str, pick_folds: int) -> dict[str, float]:
    """One fit of ``start`` and ``pick_folds`` on every training slide of ``u``: picks and test AUCs."""
    p, tr, y = u["p"], u["train"], u["train_labels"]
    negatives = np.concatenate([x for x, lab in zip(tr, y) if not lab])
    if start == "novelty":
        ref = torch.from_numpy(negatives)
        first = precision(tr, y, u["train_truth"], lambda x: novelty(x, ref, 5), p.inst_top_p)
    else:
        bag_fit = LogisticRegression(C=p.inst_init_c, max_iter=300).fit(
            np.concatenate(tr), np.concatenate([np.full(len(x), lab) for x, lab in zip(tr, y)]))
        first = precision(tr, y, u["train_truth"], bag_fit.decision_function, p.inst_top_p)
    started = time.perf_counter()
    w, b, _ = fit_misvm(tr.__getitem__, y, p.inst_top_p, p.inst_init_refits, p.inst_init_c, p.inst_init_rows,
                        np.random.default_rng(0), start=start, calibrate=False, history=False, pick_folds=pick_folds)
    seconds = time.perf_counter() - started
    te, ty = u["test"], u["test_labels"]
    return {"first_precision": round(first, 3),
            "precision": round(precision(tr, y, u["train_truth"], lambda x: x @ w, p.inst_top_p), 3),
            "test_patch_auc": round(float(roc_auc_score(np.concatenate(u["test_truth"]),
                                                        np.concatenate([x @ w for x in te]))), 4),
            "test_slide_auc": round(float(roc_auc_score(ty, [float((x @ w).max()) for x in te])), 4),
            "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohorts", nargs="+", default=["dev768-a", "devrare-a"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1])
    ap.add_argument("--scales", nargs="+", default=["high", "low"], choices=["high", "low"])
    ap.add_argument("--starts", nargs="+", default=["bags", "novelty"], choices=["bags", "novelty"])
    ap.add_argument("--pick-folds", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--work", type=Path, default=Path("/tmp/recomil-epoch0"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for seed in args.seeds:
        for cohort in args.cohorts:
            unit = prepare(cohort, seed, args.work)
            for scale in args.scales:
                u = load_unit(unit, scale)
                for start in args.starts:
                    for k in args.pick_folds:
                        key = f"{cohort}/seed{seed}/{scale}/{start}/pick{k}"
                        results[key] = probe(u, start, k)
                        print(key, results[key], flush=True)
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| cohort/seed/scale/start | pick folds | first picks' tumour share | fit's picks' tumour share | "
          "test patch AUC | test slide AUC | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, r in results.items():
        head, k = key.rsplit("/pick", 1)
        print(f"| {head} | {k} | {r['first_precision']} | {r['precision']} | {r['test_patch_auc']} | "
              f"{r['test_slide_auc']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
