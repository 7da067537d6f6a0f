"""A Camelyon16-size study on one GPU (issue #33): how long the whole 5-fold cross-validation takes.

The cohort is the demo generator's c768 family at Camelyon16's size: 270 + 130 slides (every slide
enters the 5-fold cross-validation: ~256 training, ~29 validation and 80 test slides per fold),
3,000-15,000 high-magnification patches (a quarter as many at low magnification), D 768, dual scale,
tumour 0.4-15 % of a positive slide's patches, generator seed 401 (never used to choose anything).
The pipeline's own stages run in this process, in a project folder under ``--work``: ingest
(``store_dtype: float16``), split (``folds: 5``), k-means prototypes, training (``epochs: 50`` and early
stopping as configured), evaluation. Reported: the time of each part (the cohort's generation
apart), seconds per training epoch, the peak GPU memory, the padding share and the test AUC.

Resumable: the cohort, the store, the split, the prototypes and every finished fold are kept under
``--work``; a stopped run continues (training resumes after its last finished epoch). Each part's
time is recorded once, when it finishes; the report adds them up.

    python benchmarks/gpu_study.py --work /tmp/study                           # on the GPU machine
    python benchmarks/gpu_study.py --work /tmp/study-dry --scale 0.05 --epochs 3  # a dry run on a CPU
    python benchmarks/gpu_study.py --work /tmp/study -S bags_per_step=1        # today's one-bag step
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COHORT = {"demo_feat_dim": 768, "demo_train_slides": 270, "demo_test_slides": 130, "demo_min_patches": 3000,
          "demo_max_patches": 15000, "demo_tumour_min": 0.004, "demo_tumour_max": 0.15, "demo_seed": 401}
STUDY = {"folds": 5, "epochs": 50, "store_dtype": "float16", "bags_per_step": 16, "wandb_mode": "disabled",
         "bootstrap": 0}


def cohort_params(scale: float) -> dict[str, Any]:
    """The cohort's generator settings, slide and patch counts scaled by ``scale`` (1: Camelyon16 size)."""
    c = dict(COHORT)
    for key in ("demo_train_slides", "demo_test_slides"):
        c[key] = max(10, round(c[key] * scale))
    for key in ("demo_min_patches", "demo_max_patches"):
        c[key] = max(40, round(c[key] * scale))
    return c


def timed(record: dict[str, Any], name: str, path: Path, fn) -> None:
    """Run ``fn`` unless ``record`` has ``name`` already (a resumed study), store its seconds."""
    if name in record:
        print(f"gpu_study: {name} done earlier ({record[name]:.1f} s)", flush=True)
        return
    start = time.perf_counter()
    fn()
    record[name] = round(time.perf_counter() - start, 2)
    path.write_text(json.dumps(record, indent=1))
    print(f"gpu_study: {name} {record[name]:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--scale", type=float, default=1.0, help="slide and patch counts x this (a dry run)")
    ap.add_argument("--epochs", type=int, default=STUDY["epochs"])
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="a params key=value (YAML value)")
    ap.add_argument("--out", type=Path, help="the report (Markdown; default: <work>/study.md)")
    args = ap.parse_args()
    import torch

    from recomil.config import ConfigError, make_params, parse_overrides
    from recomil.data.demo import make_demo
    from recomil.pipeline import data_stages, evaluate_stage, prototypes_stage, train_stage

    try:
        overrides = parse_overrides(args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    work = args.work.resolve()
    cohort = work / "cohort"
    project = work / f"project-{'-'.join(f'{k}{v}' for k, v in sorted(overrides.items())) or 'defaults'}"
    project.mkdir(parents=True, exist_ok=True)
    record_path = project / "times.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    cp = cohort_params(args.scale)
    if not (cohort / "test_labels.csv").is_file():  # not part of the study's time
        started = time.perf_counter()
        make_demo(make_params(cp), cohort)
        print(f"gpu_study: cohort written in {time.perf_counter() - started:.0f} s", flush=True)
    params = {"dataset": "c16", "root_dir_high": str(cohort), "root_dir_low": str(cohort),
              "train_list": str(cohort / "train_list.txt"), "test_csv": str(cohort / "test_labels.csv"),
              **STUDY, "epochs": args.epochs, **overrides}
    p = make_params(params)
    os.chdir(project)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timed(record, "ingest_s", record_path, lambda: data_stages.run_ingest(p, progress=False))
    timed(record, "split_s", record_path, lambda: data_stages.run_split(p))
    timed(record, "kmeans_s", record_path,
          lambda: [prototypes_stage.run_prototypes(p, s) for s in ("high", "low")])
    import recomil.training.trainer as trainer

    fit_s: list[float] = []  # the instance heads' fit before each fold's first epoch (part of training)
    real_fit = trainer.init_instance_heads

    def timed_fit(*a, **k):
        started = time.perf_counter()
        try:
            return real_fit(*a, **k)
        finally:
            fit_s.append(time.perf_counter() - started)

    trainer.init_instance_heads = timed_fit
    timed(record, "train_s", record_path, lambda: train_stage.run_train(p, progress=False))
    if fit_s and "fit_s" not in record:
        record["fit_s"] = round(sum(fit_s), 2)
    timed(record, "evaluate_s", record_path, lambda: evaluate_stage.run_evaluate(p))
    if cuda and "peak_gpu_gib" not in record:
        record["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    metrics = json.loads((project / "results" / "metrics.json").read_text())
    epochs, seconds, pad = [], [], []
    for log in sorted((project / "results" / "train_log").glob("fold_*.csv")):
        import pandas as pd

        df = pd.read_csv(log)
        epochs.append(len(df))
        seconds.extend(df["epoch_seconds"].tolist())
        if "pad_share" in df and df["pad_share"].notna().any():
            pad.extend(df["pad_share"].dropna().tolist())
    record.update(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                  cohort=cp, params=params, test_auc=metrics.get("auc"), epochs_per_fold=epochs,
                  epoch_s_mean=round(sum(seconds) / max(1, len(seconds)), 3),
                  pad_share=round(sum(pad) / len(pad), 4) if pad else None,
                  study_s=round(sum(record[k] for k in ("split_s", "kmeans_s", "train_s", "evaluate_s")), 1))
    record_path.write_text(json.dumps(record, indent=1))
    out = args.out or work / "study.md"
    table = [
        "| device | slides (train+test) | patches | bags per step | study (k-means + 5 folds + evaluation) | "
        "ingest | k-means | training | of which the instance heads' fit | s per epoch (mean) | epochs per fold | "
        "padding share | peak GPU memory | "
        "test AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {record['device']} | {cp['demo_train_slides']}+{cp['demo_test_slides']} | "
        f"{cp['demo_min_patches']}-{cp['demo_max_patches']} | {p.bags_per_step} | {record['study_s']} s | "
        f"{record['ingest_s']} s | {record['kmeans_s']} s | {record['train_s']} s | {record.get('fit_s', 'n/a')} s | "
        f"{record['epoch_s_mean']} | "
        f"{epochs} | {record['pad_share']} | {record.get('peak_gpu_gib', 'n/a')} GiB | {record['test_auc']} |",
    ]
    with out.open("a") as fh:
        fh.write("\n".join(table) + "\n\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
