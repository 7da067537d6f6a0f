"""The model right after ``inst_init`` (no training step) on the development cohorts: how well the
fitted instance heads rank the test slides before training, for several fits.

    python benchmarks/recipe_epoch0.py --cohorts devrare-a devrare-b --work /tmp/recomil-epoch0

Per cohort of ``vs_original.py`` (generated under ``--work``) and training seed (``--seeds``, 1): the
ingest, split and prototypes stages as ``vs_original.py``'s units run them (fold 0, its validation
slides held out), the model built and its heads fitted exactly as the trainer does
(:func:`recomil.training.instance_init.init_instance_heads`), then the test slides' fused log-odds and
each scale's. Variants (``VARIANTS``): session 17's fit (6 refits, one fit on every training slide),
refits until the chosen patches repeat with that full fit, and the same with the bagged head (sessions
18-19's defaults); out-of-part picking (``inst_init_pick_folds: 3``) with the bagged head and with the
full fit (the defaults since session 20). Results: ``results/recipe/epoch0_s18.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import vs_original as vs  # noqa: E402

from recomil.config import make_params  # noqa: E402
from recomil.data.store import FeatureStore  # noqa: E402
from recomil.model.factory import build_model_from_prototypes  # noqa: E402
from recomil.pipeline import data_stages, paths, prototypes_stage  # noqa: E402
from recomil.pipeline.train_stage import load_prototypes  # noqa: E402
from recomil.training.bags import BagSet  # noqa: E402
from recomil.training.instance_init import init_instance_heads  # noqa: E402
from recomil.training.trainer import member_seed, model_params  # noqa: E402

OUT = HERE / "results" / "recipe" / "epoch0_s18.json"
VARIANTS: dict[str, dict[str, Any]] = {  # each names every key it stands for: the defaults move
    "s17": {"inst_init_refits": 6, "inst_init_head": "full", "inst_init_pick_folds": 1},
    "converged-full": {"inst_init_head": "full", "inst_init_pick_folds": 1},
    "converged-bagged": {"inst_init_head": "bagged", "inst_init_pick_folds": 1},  # sessions 18-19's defaults
    "pick3": {"inst_init_pick_folds": 3, "inst_init_head": "bagged"},
    "pick3-full": {"inst_init_pick_folds": 3, "inst_init_head": "full"},  # the defaults since session 20
    "pick1": {"inst_init_pick_folds": 1, "inst_init_head": "bagged"},
}


def prepare(cohort: str, seed: int, work: Path) -> Path:
    """The unit folder of ``cohort`` and ``seed`` with its store, split and prototypes (made when absent)."""
    root = vs.make_cohort(cohort, work)
    unit = work / "epoch0" / f"{cohort}-seed{seed}"
    params = {"dataset": "c16", "root_dir_high": str(root), "root_dir_low": str(root),
              "train_list": str(root / "train_list.txt"), "test_csv": str(root / "test_labels.csv"),
              "seed": seed, "wandb_mode": "disabled", "bootstrap": 0}
    if not (unit / "data" / "prototypes").is_dir():
        unit.mkdir(parents=True, exist_ok=True)
        (unit / "params.json").write_text(json.dumps(params))
        cwd = os.getcwd()
        os.chdir(unit)
        try:
            p = make_params(params)
            data_stages.run_ingest(p, progress=False)
            data_stages.run_split(p)
            for scale in ("high", "low"):
                prototypes_stage.run_prototypes(p, scale)
        finally:
            os.chdir(cwd)
    return unit


def fold0_model(overrides: dict[str, Any]) -> tuple[Any, FeatureStore, dict[str, Any], Any, torch.nn.Module]:
    """In a prepared unit folder (the working directory): its params with ``overrides``, store, fold 0's
    split, model params and the model built from fold 0's prototypes as the trainer builds it (its seed)."""
    p = make_params({**json.loads(Path("params.json").read_text()), **overrides})
    store = FeatureStore(paths.STORE)
    split = data_stages.load_split(paths.SPLIT)[0]
    mp = model_params(p, store)
    protos = load_prototypes(mp.scales, 0, paths.PROTOTYPES, None)
    torch.manual_seed(member_seed(p.seed, 0, 0))
    return p, store, split, mp, build_model_from_prototypes(mp, protos)


def epoch0(unit: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Test AUC (fused, per scale) and mean P(tumour) per class of the model right after ``inst_init``."""
    cwd = os.getcwd()
    os.chdir(unit)
    try:
        p, store, split, mp, model = fold0_model(overrides)
        lines: list[str] = []
        init_instance_heads(model, BagSet(store, split["train"], mp.scales), p, member_seed(p.seed, 0, 0),
                            "fold 0", log=lines.append)
        model.eval()
        test = BagSet(store, split["test"], mp.scales)
        rows = []
        with torch.no_grad():
            for j in range(len(test)):
                bag = test.bag(j, torch.device("cpu"))
                out = model(bag["high"], bag.get("low"))
                keys = ["logits", *(f"logits_{s}" for s in mp.scales)]
                rows.append([float(out[k][0, 1] - out[k][0, 0]) for k in keys])
    finally:
        os.chdir(cwd)
    r, y = np.array(rows), np.asarray(test.labels)
    prob = 1.0 / (1.0 + np.exp(-r[:, 0]))
    return {"test_auc": round(float(roc_auc_score(y, r[:, 0])), 3),
            **{f"test_auc_{s}": round(float(roc_auc_score(y, r[:, i + 1])), 3) for i, s in enumerate(mp.scales)},
            "p_tumour_negatives": round(float(prob[y == 0].mean()), 3),
            "p_tumour_positives": round(float(prob[y == 1].mean()), 3), "log": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohorts", nargs="+", default=["devrare-a", "devrare-b", "devrare-c", "devrare-d",
                                                      "dev768-a", "dev768-c"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1], help="training seeds (split, fit, weights)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/recomil-epoch0"))
    ap.add_argument("--out", type=Path, default=OUT, help="results file (held-out cohorts: keep them apart)")
    args = ap.parse_args()
    out = args.out
    results = json.loads(out.read_text()) if out.is_file() else {}
    for seed in args.seeds:
        for cohort in args.cohorts:
            unit = prepare(cohort, seed, args.work)
            row = results.setdefault(f"{cohort}/seed{seed}", {})
            for name in args.variants:
                row[name] = epoch0(unit, VARIANTS[name])
                print(cohort, seed, name, {k: v for k, v in row[name].items() if k != "log"}, flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| cohort, seed | " + " | ".join(VARIANTS) + " |")
    print("|" + " --- |" * (1 + len(VARIANTS)))
    for key, row in results.items():
        print(f"| {key} | " + " | ".join(str(row.get(v, {}).get("test_auc", "")) for v in VARIANTS) + " |")


if __name__ == "__main__":
    main()
