"""recomil side by side with the original ReCo-MIL code: the same cohorts, splits and seeds.

Usage (one training at a time; resumable: every finished unit is cached as JSON)::

    python benchmarks/vs_original.py --original /path/to/ReCo-MIL            # everything
    python benchmarks/vs_original.py --original ../scratch/ReCo-MIL --cohorts c128-a --seeds 1 2
    python benchmarks/vs_original.py --report-only                            # rebuild the Markdown

``--original`` is a checkout of the public repository ``zsszc/ReCo-MIL`` kept *outside* this
project (nothing of it is copied here; it is run as its authors run it). Without it the
original's units are skipped with a message and only recomil's are run.

Cohorts are written by recomil's demo generator in the original's own Camelyon16 pkl layout
(``train/tumor``, ``train/normal``, ``test``, ``{slide}_{high,low}_feature_ctrans.pkl``, a
``train_list.txt`` and ``test_labels.csv``), so that both programs read the very same files;
``musk1`` and ``elephant`` are the classic MIL sets under ``--data-root`` (default
``../shared/data``) written in the same layout with a fixed stratified 30 % test split, every
bag at both scales (the original trains dual-scale only).
Each unit is one (cohort, program, seed):

- ``original``: the original's ``minibatch_kmeans_recomil.py`` per scale on the training list
  (its defaults, no frequency file: its training script's default, so its rare weights are off),
  then ``train_recomil_v3.py`` with its defaults and ``--seed``; test predictions from its best
  checkpoint, loaded with its own model class.
- ``recomil``: the pipeline's stages (ingest, split, prototypes, train, evaluate) with
  ``params.yaml``'s defaults and ``seed``.
- ``recomil-original``: recomil with :data:`ORIGINAL`, the documented way to make recomil behave
  as the original's defaults (the parity baseline).
- the other entries of :data:`VARIANTS` (``--programs recomil-first-tie recomil-ens3``): recomil
  with one default changed back, or a costlier option; the report gives their paired difference
  to ``recomil``, the evidence for that default.
- the entries of :data:`GROWS` (``recomil-ens10``): a larger ensemble grown from a smaller one's
  records of the same cohort and seed (run that first): only the further members are trained,
  since member m depends on ``(seed, fold, m)`` alone.

Each unit runs in its own process with ``--threads`` torch threads (1 by default: two trainings
side by side on 2 cores slow each other many-fold). Recorded per unit: test AUC, accuracy and
balanced accuracy, epochs run, seconds per epoch (training pass plus validation, as each program
measures it), the whole unit's seconds and the peak resident memory of its processes; beside each
record, recomil's per-epoch logs (``seed<N>_train_log/``) and the program's own output (``seed<N>_log.txt``,
its last 256 kB: the instance head's fit, each epoch, warnings).
The report (``benchmarks/vs_original.md``) gives mean ± sd over seeds per cohort and program, and
the paired difference to the original (same cohort and seed) with its standard error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "results" / "vs_original"
REPORT = HERE / "vs_original.md"
META = HERE / "results" / "vs_original_meta.json"

#: recomil's params that reproduce the original's default behaviour (README "Coming from the original").
ORIGINAL: dict[str, Any] = {
    "standardize": False,               # the original trains on raw features
    "kmeans_algorithm": "minibatch",    # scikit-learn-style mini-batch k-means
    "rare_beta_high": 0.0,              # its training script passes no frequency file by default
    "rare_beta_low": 0.0,
    "early_stop_after_warmup": False,   # patience counted from epoch 1
    "tie_break": "none",                # the first epoch of the best validation score is kept
    "select_after_warmup": False,       # every epoch may be selected, warm-up included
    "amp": "off",                       # float32 training (the original's --fp16 is off by default)
    "lambda_inst": 0.0,                 # no instance-level loss
    "instance_stream": False,           # the attention head's prediction alone
    "inst_init": "none",
}
#: the defaults of sessions 15-16 (issue #31 before inst_init): the instance-level loss on a head over the patch
#: tokens, the attention head's prediction alone
TOKENS: dict[str, Any] = {"inst_on": "tokens", "instance_stream": False, "inst_init": "none", "stream_weight": 0.5,
                          "patience_on": "selection"}

#: the defaults of session 17 (fe50307): six refits from the chosen start, then one fit on every training slide
S17: dict[str, Any] = {"inst_init_refits": 6, "inst_init_head": "full", "inst_init_pick_folds": 1,
                       "patience_on": "selection"}

#: the defaults of sessions 18-19 (a9a2981..c4731a7): in-sample picking, the head the mean of the cross-fitting
#: folds' fits
S19: dict[str, Any] = {"inst_init_pick_folds": 1, "inst_init_head": "bagged", "patience_on": "selection"}

#: the defaults of session 20 (e18f71d..2ebc6b0): every newly selected epoch, the validation-loss tie-break's
#: included, reset the patience (a run whose validation AUC saturates runs on while its loss creeps down)
S20: dict[str, Any] = {"patience_on": "selection"}

#: Slide-like cohorts (demo generator settings). One at CTransPath width; the others narrower so
#: that the whole grid fits a few hours of a 2-core machine.
_C128 = {"demo_feat_dim": 128, "demo_train_slides": 100, "demo_test_slides": 50, "demo_min_patches": 300,
         "demo_max_patches": 800, "demo_tumour_min": 0.004, "demo_tumour_max": 0.15}
_C768 = {"demo_feat_dim": 768, "demo_train_slides": 60, "demo_test_slides": 40, "demo_min_patches": 300,
         "demo_max_patches": 1500, "demo_tumour_min": 0.004, "demo_tumour_max": 0.15}
#: the rare family of issue #31: D 128, 100/50 slides, tumour 0.2-2 % of a positive slide's patches
_RARE = {**_C128, "demo_tumour_min": 0.002, "demo_tumour_max": 0.02}
COHORTS: dict[str, dict[str, Any]] = {
    "c768": {**_C768, "demo_seed": 101},
    "c128-a": {**_C128, "demo_seed": 102},
    "c128-b": {**_C128, "demo_seed": 103},
    "c128-rare": {**_C128, "demo_seed": 104, "demo_tumour_min": 0.002, "demo_tumour_max": 0.02},
    # issue #31: development cohorts (generator seeds 201, 202, 204, 205; 206, 207 added in session 16 to
    # find development cohorts where the defaults fail), where recipe defaults are chosen, and reporting
    # cohorts (301, 302, 303, 304), which never served to choose anything
    **{f"dev768-{t}": {**_C768, "demo_seed": 200 + k} for t, k in (("a", 1), ("b", 2), ("c", 6), ("d", 7))},
    **{f"devrare-{t}": {**_RARE, "demo_seed": 203 + k} for t, k in (("a", 1), ("b", 2))},
    # session 18: more development cohorts (generator seeds 208-213) to find where the fitted head is weak
    **{f"dev768-{t}": {**_C768, "demo_seed": s} for t, s in (("e", 208), ("f", 209), ("g", 210), ("h", 211))},
    **{f"devrare-{t}": {**_RARE, "demo_seed": s} for t, s in (("c", 212), ("d", 213))},
    **{f"rep768-{k}": {**_C768, "demo_seed": 300 + k} for k in (1, 2)},
    **{f"reprare-{k}": {**_RARE, "demo_seed": 302 + k} for k in (1, 2)},
    # session 20: fresh reporting cohorts (rep768-1 served to diagnose the fit's misses in session 19)
    "rep768-3": {**_C768, "demo_seed": 305},
    "reprare-3": {**_RARE, "demo_seed": 306},
    # the classic MIL sets of --data-root, one fixed stratified train/test split each; the original
    # trains dual-scale only (its single-scale path fails, docs/method.md), so both programs read
    # each bag's features at both scales
    "musk1": {"classic": "musk1", "test_share": 0.3, "split_seed": 0},
    "elephant": {"classic": "elephant", "test_share": 0.3, "split_seed": 0},
}
#: where the classic sets live (``--data-root``)
DATA_ROOT = [REPO.parent / "shared" / "data"]
#: recomil's programs: the params each one sets over params.yaml's defaults. ``recomil`` is the
#: defaults as shipped; the others isolate one default (its paired difference to ``recomil`` on the
#: same cohort and seed is the evidence for that default) or a costlier option.
VARIANTS: dict[str, dict[str, Any]] = {
    "recomil": {},
    "recomil-original": ORIGINAL,
    "recomil-all-epochs": {"select_after_warmup": False},  # warm-up epochs may be selected (the original)
    "recomil-first-tie": {"tie_break": "none", "select_after_warmup": False},  # selection before both
    "recomil-raw": {"standardize": False},      # raw features into k-means and the model (the original)
    "recomil-minibatch": {"kmeans_algorithm": "minibatch"},  # the original's mini-batch k-means
    "recomil-no-rare": {"rare_beta_high": 0.0, "rare_beta_low": 0.0},  # no rare-prototype weights (the original)
    "recomil-ens3": {"ensemble": 3},              # three models per fold, each selected on its own validation slides
    "recomil-ens3-shared": {"ensemble": 3, "ensemble_val": "shared"},  # ... all on the split's validation slides
    "recomil-ema2": {"ema_epochs": 2.0},          # validate, select and save the weights' moving average (2 epochs)
    "recomil-ema5": {"ema_epochs": 5.0},          # ... with a 5-epoch time constant
    "recomil-val20": {"val_split": 0.2},          # twice the validation patients (12 of c768's 60 slides)
    # three models per fold, each with k-means prototypes of its own: the members differ in every seed draw
    "recomil-ens3-kmeans": {"ensemble": 3, "ensemble_protos": "resample"},
    "recomil-ens5": {"ensemble": 5},              # five models per fold; every member's test predictions kept
    "recomil-ens10": {"ensemble": 10},            # ten: members 5-9 trained, 0-4 taken from recomil-ens5 (GROWS)
    "recomil-tokens": TOKENS,                     # the defaults before session 17 (records under "recomil" before)
    "recomil-s17": S17,                           # the defaults of session 17 (records under "recomil" before a9a2981)
    "recomil-s19": S19,                           # the defaults of sessions 18-19 (records under "recomil" before)
    "recomil-s20": S20,                           # the defaults of session 20 (records under "recomil" before)
    "recomil-no-inst": {**TOKENS, "lambda_inst": 0.0},  # no instance-level loss (the original's recipe)
    "recomil-noclip": {**TOKENS, "grad_clip": 0.0},        # no gradient-norm clipping
    # the instance head's top patch in the slide's log-odds (DSMIL)
    "recomil-stream": {**TOKENS, "instance_stream": True},
    # a linear instance head on the standardised features, its top patch in the slide's log-odds
    "recomil-linear-stream": {**TOKENS, "inst_on": "input", "instance_stream": True},
    "recomil-linear-lr": {**TOKENS, "inst_on": "input", "instance_stream": True, "inst_lr": 1e-3},
    # the slide's log-odds the linear head's top patch alone (mi-SVM with max pooling, the attention head unused)
    "recomil-linear-max": {**TOKENS, "inst_on": "input", "instance_stream": True, "inst_lr": 1e-3,
                           "stream_weight": 1.0},
    # session 17: the linear input head fitted in closed form before the first epoch (mi-SVM), in the log-odds
    # (the defaults since session 17 are recomil-misvm-max's)
    "recomil-misvm": {"inst_on": "input", "instance_stream": True, "inst_init": "misvm", "stream_weight": 0.5},
    "recomil-misvm-max": {"inst_on": "input", "instance_stream": True, "inst_init": "misvm", "stream_weight": 1.0},
    "recomil-misvm-w75": {"inst_on": "input", "instance_stream": True, "inst_init": "misvm", "stream_weight": 0.75},
    # ... started from a fit of every patch with its slide's label, two refits (3283df6's only start)
    "recomil-misvm-bags": {"inst_on": "input", "instance_stream": True, "inst_init": "misvm",
                           "inst_init_start": "bags", "inst_init_refits": 2, "stream_weight": 0.5},
    "recomil-misvm-bags-max": {"inst_on": "input", "instance_stream": True, "inst_init": "misvm",
                               "inst_init_start": "bags", "inst_init_refits": 2, "stream_weight": 1.0},
    "recomil-b16": {**TOKENS, "bags_per_step": 16},         # 16 bags per step (padded on a GPU: issue #33)
    "recomil-b16-lr": {**TOKENS, "bags_per_step": 16, "lr": 4e-4},  # the same, learning rate x sqrt(16)
    # session 20: each refit of the fit picks a slide's positives with fits that left them out (3 parts)
    "recomil-pick3": {"inst_init_pick_folds": 3, "inst_init_head": "bagged", "patience_on": "selection"},
    # ... and one fit on every slide
    "recomil-pick3-full": {"inst_init_pick_folds": 3, "inst_init_head": "full", "patience_on": "selection"},
    # session 24: the instance loss's and the fit's positives per positive slide: k = max(1, floor(N p)), about
    # 1 of a rare cohort's ~550 patches (the default 0.01: about 5, more than most rare slides' tumour patches)
    "recomil-k1": {"inst_top_p": 0.002},
    "recomil-inst03": {"lambda_inst": 0.3},       # a third of the instance-level loss's weight
    "recomil-bf16": {"amp": "bf16"},              # bf16 autocast whatever the bag size (amp: auto's choice on a
                                                  # bf16 CPU before it kept float32 for bags under 256 patches)
}
#: A larger ensemble's unit that reuses the recorded members of a smaller one (same cohort and seed):
#: member m draws its weights, dropout, bag order and validation slides from ``(seed, fold, m)``
#: alone (:func:`recomil.pipeline.train_stage.train_member`), so the first members of an ensemble of
#: 10 are those of an ensemble of 5; only the further members are trained and their test
#: probabilities appended to the smaller ensemble's record.
GROWS: dict[str, str] = {"recomil-ens10": "recomil-ens5"}
PROGRAMS = ("original", *VARIANTS)
DEFAULT_PROGRAMS = ("original", "recomil", "recomil-original")


# ----------------------------------------------------------------------------- cohorts
def make_cohort(name: str, work: Path) -> Path:
    """Write cohort ``name`` under ``work`` once (deterministic given its settings)."""
    from recomil.config import make_params
    from recomil.data.demo import make_demo

    root = work / "cohorts" / name
    if not (root / "test_labels.csv").is_file():
        if "classic" in COHORTS[name]:
            write_classic(COHORTS[name], DATA_ROOT[0] / COHORTS[name]["classic"], root)
        else:
            make_demo(make_params(COHORTS[name]), root)
    return root


def write_classic(c: dict[str, Any], src: Path, root: Path) -> None:
    """A classic MIL set (``features/<bag>.npy`` and ``labels.csv``, labels 0/1) in the original's
    C16 layout: a stratified ``test_share`` of the bags (drawn from ``split_seed``) as ``test``,
    the others as ``train/tumor`` and ``train/normal``; every bag written at both scales."""
    import pandas as pd

    from recomil.data.demo import _write_pkl as write_pkl  # the demo's writer of the original's pkl layout

    if not (src / "labels.csv").is_file():
        raise SystemExit(f"vs_original: {src / 'labels.csv'} not found (pass --data-root, the folder that "
                         f"holds {c['classic']}/)")
    labels = pd.read_csv(src / "labels.csv")
    rng = np.random.default_rng(c["split_seed"])
    test = set()
    for y in (0, 1):
        ids = labels.loc[labels["label"] == y, "slide_id"].astype(str).to_numpy()
        test |= set(rng.permutation(ids)[:round(c["test_share"] * len(ids))])
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("train/tumor", "train/normal", "test"):
        (tmp / sub).mkdir(parents=True)
    train_ids, test_rows = [], []
    for sid, y in zip(labels["slide_id"].astype(str), labels["label"].astype(int)):
        x = np.load(src / "features" / f"{sid}.npy", allow_pickle=False).astype(np.float32)
        if sid in test:
            name, folder = f"test_{sid}", tmp / "test"
            test_rows.append(f"{name},{y}\n")
        else:
            name, folder = f"{'tumor' if y else 'normal'}_{sid}", tmp / "train" / ("tumor" if y else "normal")
            train_ids.append(name)
        coords = np.stack([np.zeros(len(x)), 64 * np.arange(len(x))], axis=1)
        for scale in ("high", "low"):
            write_pkl(folder / f"{name}_{scale}_feature_ctrans.pkl", x, coords)
    (tmp / "train_list.txt").write_text("".join(f"{t}\n" for t in rng.permutation(train_ids)))
    (tmp / "test_labels.csv").write_text("slide,label\n" + "".join(test_rows))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def cohort_dim(name: str) -> int:
    """Feature width of a cohort."""
    c = COHORTS[name]
    if "demo_feat_dim" in c:
        return c["demo_feat_dim"]
    first = min((DATA_ROOT[0] / c["classic"] / "features").glob("*.npy"))
    return int(np.load(first, mmap_mode="r", allow_pickle=False).shape[1])


# ----------------------------------------------------------------------------- running units
def _run(cmd: list[str], cwd: Path, threads: int, log: Path, extra_env: dict[str, str] | None = None) -> float:
    """Run ``cmd``; returns the peak RSS (MB) of the process tree it waited for. Raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               WANDB_SILENT="true", WANDB_MODE="offline", PYTHONWARNINGS="ignore", **(extra_env or {}))
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed with exit {proc.returncode}; see {log}")
    return usage.ru_maxrss / 1024


def metrics_of(labels: np.ndarray, prob_pos: np.ndarray) -> dict[str, float]:
    """Test AUC, accuracy (argmax of two classes = prob > 0.5) and balanced accuracy."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = (prob_pos > 0.5).astype(int)
    return {"auc": float(roc_auc_score(labels, prob_pos)), "acc": float((pred == labels).mean()),
            "balanced_acc": float(balanced_accuracy_score(labels, pred))}


def run_original(cohort: Path, d: int, seed: int, unit: Path, original: Path, threads: int) -> dict[str, Any]:
    """The original's k-means per scale, then its training script, both with their defaults."""
    log = unit / "log.txt"
    peak = 0.0
    started = time.perf_counter()
    for scale in ("high", "low"):
        peak = max(peak, _run([sys.executable, str(original / "minibatch_kmeans_recomil.py"), "--dataset", "c17",
                               "--root_dir", str(cohort), "--ids_file", str(cohort / "train_list.txt"),
                               "--scale", scale, "--feat_dim", str(d), "--seed", str(seed),
                               "--save_protos", str(unit / f"protos_{scale}.pt")], unit, threads, log))
    peak = max(peak, _run([sys.executable, str(original / "train_recomil_v3.py"), "--root_dir_high", str(cohort),
                           "--root_dir_low", str(cohort), "--train_list", str(cohort / "train_list.txt"),
                           "--test_csv", str(cohort / "test_labels.csv"), "--feat_dim_high", str(d),
                           "--feat_dim_low", str(d), "--proto_init_path_high", str(unit / "protos_high.pt"),
                           "--proto_init_path_low", str(unit / "protos_low.pt"), "--seed", str(seed),
                           "--wandb_project", "vs_original", "--wandb_mode", "offline", "--print_every", "0",
                           "--save_dir", str(unit / "ckpt")], unit, threads, log, {"WANDB_DIR": str(unit)}))
    seconds = time.perf_counter() - started
    epochs = [float(x) for x in re.findall(r"^Epoch \d+ .*\| time ([0-9.]+)s$", log.read_text(), re.M)]
    peak = max(peak, _run([sys.executable, __file__, "--original-predict", str(original), str(cohort),
                           str(unit / "ckpt" / "recomil_best_v3.pt"), str(unit / "predictions.json")],
                          unit, threads, log))
    pred = json.loads((unit / "predictions.json").read_text())
    return {**metrics_of(np.array(pred["labels"]), np.array(pred["prob"])), "epochs_run": len(epochs),
            "best_epoch": pred.get("best_epoch"),
            "epoch_seconds": float(np.mean(epochs)) if epochs else None, "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak, 1)}


def original_predict(original: Path, cohort: Path, ckpt: Path, out: Path) -> None:
    """Child: test probabilities of the original's best checkpoint, with the original's own classes."""
    import torch

    sys.path.insert(0, str(original))
    from dual_recomil import DualReCoMIL  # noqa: E402  (the original's module)
    from reco_dataset import C16MultiScaleDataset, read_label_csv  # noqa: E402

    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own run's file, not untrusted input
    a = state["args"]
    model = DualReCoMIL(
        dim_in_high=a["feat_dim_high"], embed_dim_high=a["embed_dim_high"], num_protos_high=a["num_protos_high"],
        proto_init_path_high=a["proto_init_path_high"], similarity_method_high=a["similarity_method_high"],
        tau_high=a["tau_start_high"], route_topk_high=a["route_topk_high"],
        use_graph_reducer_high=a["use_graph_reducer_high"], graph_thresh_high=a["graph_thresh_high"],
        dim_in_low=a["feat_dim_low"], embed_dim_low=a["embed_dim_low"], num_protos_low=a["num_protos_low"],
        proto_init_path_low=a["proto_init_path_low"], similarity_method_low=a["similarity_method_low"],
        tau_low=a["tau_start_low"], route_topk_low=a["route_topk_low"],
        use_graph_reducer_low=a["use_graph_reducer_low"], graph_thresh_low=a["graph_thresh_low"],
        num_classes=a["num_classes"], num_enhancers=3, drop=0.25, hard=False)
    model.load_state_dict(state["model_state"], strict=True)  # every weight of the checkpoint, nothing missing
    model.eval()
    labels_map = read_label_csv(str(cohort / "test_labels.csv"))
    ids = list(labels_map)
    ds = C16MultiScaleDataset(root_dir=str(cohort), slide_ids=ids, label_map=labels_map,
                              feat_dim_high=a["feat_dim_high"], feat_dim_low=a["feat_dim_low"])
    probs, labels = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            (xh, xl), y, _ = ds[i]
            out_ = model(data_high=xh[None], data_low=xl[None])
            probs.append(float(torch.softmax(out_["logits"], -1)[0, 1]))
            labels.append(int(y))
    out.write_text(json.dumps({"ids": ids, "labels": labels, "prob": probs, "best_epoch": int(state["epoch"])}))


def run_recomil(cohort: Path, seed: int, unit: Path, overrides: dict[str, Any], threads: int) -> dict[str, Any]:
    """recomil's stages in a child process, in a project directory of the unit's own."""
    params = {"dataset": "c16", "root_dir_high": str(cohort), "root_dir_low": str(cohort),
              "train_list": str(cohort / "train_list.txt"), "test_csv": str(cohort / "test_labels.csv"),
              "seed": seed, "wandb_mode": "disabled", "bootstrap": 0, **overrides}
    (unit / "params.json").write_text(json.dumps(params))
    started = time.perf_counter()
    peak = _run([sys.executable, __file__, "--recomil-child", str(unit)], unit, threads, unit / "log.txt")
    rec = json.loads((unit / "child.json").read_text())
    return {**rec, "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak, 1)}


def recomil_child(unit: Path) -> None:
    """Child: ingest, split, prototypes, train, evaluate with the unit's params."""
    import pandas as pd

    from recomil.config import make_params
    from recomil.pipeline import data_stages, evaluate_stage, prototypes_stage, train_stage

    os.chdir(unit)
    p = make_params(json.loads((unit / "params.json").read_text()))
    data_stages.run_ingest(p, progress=False)
    data_stages.run_split(p)
    for scale in ("high", "low"):
        prototypes_stage.run_prototypes(p, scale)
    if (unit / "grow.json").is_file():
        return grow_child(unit, p, json.loads((unit / "grow.json").read_text())["first"])
    summary = train_stage.run_train(p, progress=False)["folds"][0]
    evaluate_stage.run_evaluate(p)
    pred = pd.read_csv("results/predictions.csv")
    log = pd.read_csv("results/train_log/fold_0.csv") if Path("results/train_log/fold_0.csv").is_file() else None
    epoch_s = float(log["epoch_seconds"].mean()) if log is not None and "epoch_seconds" in log else None
    # every member's epochs (ensemble > 1 trains several models): the training time the result cost
    train_s = sum(float(pd.read_csv(f)["epoch_seconds"].sum()) for f in Path("results/train_log").glob("fold_0*.csv"))
    rec = {**metrics_of((pred["label"] == "tumor").to_numpy().astype(int), pred["prob_tumor"].to_numpy()),
           "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"], "epoch_seconds": epoch_s,
           "train_seconds": round(train_s, 1),
           "test_ids": pred["slide_id"].astype(str).tolist(), "test_prob": pred["prob_tumor"].round(6).tolist(),
           "test_labels": (pred["label"] == "tumor").astype(int).tolist()}
    if p.ensemble > 1:  # each member's own test probabilities: ensembles of 1..M members from one run
        rec["member_test_prob"] = member_test_probs(rec["test_ids"])
    (unit / "child.json").write_text(json.dumps(rec))


def grow_child(unit: Path, p: Any, first: int) -> None:
    """Child of a :data:`GROWS` unit: train only members ``first`` .. ``ensemble - 1`` of fold 0 (the
    stages before train already run) and record their test probabilities, ``member_test_prob``
    ``[ensemble - first][S]``; the parent joins them to the smaller ensemble's record."""
    import pandas as pd

    from recomil.data.store import FeatureStore
    from recomil.pipeline import paths
    from recomil.pipeline.data_stages import load_split
    from recomil.pipeline.prototypes_stage import load_prototypes
    from recomil.pipeline.train_stage import train_member
    from recomil.training.trainer import member_file, model_params

    store = FeatureStore(paths.STORE)
    split = load_split(paths.SPLIT)[0]
    scales = model_params(p, store).scales
    protos = load_prototypes(scales, 0, paths.PROTOTYPES, {s: (p.scale(s).num_protos, store.dims[s]) for s in scales})
    summaries = [train_member(p, store, split, 0, m, protos) for m in range(first, p.ensemble)]
    test_ids = list(split["test"])
    labels = dict(zip(store.manifest["slide_id"], store.manifest["label"]))
    epoch_s = [float(x) for f in Path("results/train_log").glob("fold_0*.csv") for x in pd.read_csv(f)["epoch_seconds"]]
    rec = {"test_ids": test_ids, "test_labels": [int(labels[i] == "tumor") for i in test_ids],
           "member_test_prob": member_test_probs(test_ids, [paths.MODELS / "fold_0" / member_file(m)
                                                            for m in range(first, p.ensemble)]),
           "members_epochs_run": [s["epochs_run"] for s in summaries], "train_seconds": round(sum(epoch_s), 1),
           "epoch_seconds": float(np.mean(epoch_s)) if epoch_s else None}
    (unit / "child.json").write_text(json.dumps(rec))


def member_test_probs(test_ids: list[str], files: list[Path] | None = None) -> list[list[float]]:
    """The tumour probability of each model file in ``files`` (default: the ensemble members
    ``best.pt``, ``best_m1.pt``, ... of fold 0) on the test slides ``test_ids``, member by member:
    ``[M][S]`` (in the child's project directory)."""
    from recomil.data.store import FeatureStore
    from recomil.inference import load_model, member_files, predict_bags
    from recomil.pipeline import paths
    from recomil.training.bags import BagSet

    store = FeatureStore(paths.STORE)
    tumour = store.classes.index("tumor")
    models = [load_model(f)[0] for f in (files or member_files(paths.MODELS / "fold_0"))]
    test = BagSet(store, test_ids, tuple(models[0].scales))  # every member reads the same scales
    bags = [test.bag(j) for j in range(len(test))]  # read once for all members
    return [np.round(predict_bags(model, bags)[0][:, tumour], 6).tolist() for model in models]


def grow_unit(cohort: Path, cohort_name: str, program: str, seed: int, unit: Path, threads: int) -> dict[str, Any]:
    """A :data:`GROWS` unit: the smaller ensemble's record (which must exist) plus the further members,
    trained in a child; the ensemble's test probability is the mean over all members, as the
    evaluate stage averages them."""
    base_file = CACHE / cohort_name / GROWS[program] / f"seed{seed}.json"
    if not base_file.is_file():
        sys.exit(f"error: {program} on {cohort_name} seed {seed} extends {GROWS[program]}'s record, and "
                 f"{base_file} does not exist: run --programs {GROWS[program]} for that cohort and seed first")
    base = json.loads(base_file.read_text())
    first = len(base["member_test_prob"])
    (unit / "grow.json").write_text(json.dumps({"first": first}))
    tail = run_recomil(cohort, seed, unit, VARIANTS[program], threads)
    if tail["test_ids"] != base["test_ids"]:
        sys.exit(f"error: {program} on {cohort_name} seed {seed}: the test slides differ from {base_file}'s")
    members = base["member_test_prob"] + tail["member_test_prob"]
    prob = np.mean(np.array(members, float), axis=0)
    labels = np.array(base["test_labels"])
    return {**metrics_of(labels, prob), "epochs_run": base["epochs_run"], "best_epoch": base["best_epoch"],
            "epoch_seconds": tail["epoch_seconds"],
            "train_seconds": round(base["train_seconds"] + tail["train_seconds"], 1),
            "test_ids": base["test_ids"], "test_prob": np.round(prob, 6).tolist(), "test_labels": base["test_labels"],
            "member_test_prob": members, "grown_from": GROWS[program], "members_trained": [first, len(members)],
            "members_epochs_run": tail["members_epochs_run"],
            "seconds": round(base["seconds"] + tail["seconds"], 1),
            "peak_rss_mb": max(base["peak_rss_mb"], tail["peak_rss_mb"])}


def run_unit(cohort_name: str, program: str, seed: int, work: Path, original: Path | None,
             threads: int) -> dict[str, Any] | None:
    out = CACHE / cohort_name / program / f"seed{seed}.json"
    if out.is_file():
        return json.loads(out.read_text())
    if program == "original" and original is None:
        return None
    cohort = make_cohort(cohort_name, work)
    unit = work / "units" / cohort_name / program / f"seed{seed}"
    shutil.rmtree(unit, ignore_errors=True)
    unit.mkdir(parents=True)
    if program == "original":
        rec = run_original(cohort, cohort_dim(cohort_name), seed, unit, original, threads)
    elif program in GROWS:
        rec = grow_unit(cohort, cohort_name, program, seed, unit, threads)
    else:
        rec = run_recomil(cohort, seed, unit, VARIANTS[program], threads)
    ran_with = ({"original": str(original), "cohort": COHORTS[cohort_name], "seed": seed} if program == "original"
                else {"overrides": VARIANTS.get(program, {}), "cohort": COHORTS[cohort_name], "seed": seed,
                      "params": json.loads((unit / "params.json").read_text()) if (unit / "params.json").is_file()
                      else None})
    rec = {"cohort": cohort_name, "program": program, "seed": seed, "threads": threads, **rec, **provenance(ran_with)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(rec, indent=1))
    out.with_suffix(".tmp").replace(out)
    if (unit / "results" / "train_log").is_dir():  # the per-epoch logs, to look inside a result later
        logs = out.with_name(f"seed{seed}_train_log")
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(unit / "results" / "train_log", logs)
    if (unit / "log.txt").is_file():  # the program's own output (the fit's lines, each epoch): its last 256 kB
        text = (unit / "log.txt").read_bytes()[-256_000:]
        out.with_name(f"seed{seed}_log.txt").write_bytes(text)
    shutil.rmtree(unit, ignore_errors=True)
    print(f"[{cohort_name} seed {seed}] {program}: AUC {rec['auc']:.3f} acc {rec['acc']:.3f} "
          f"{rec['epochs_run']} epochs, {rec['epoch_seconds'] or float('nan'):.1f} s/epoch, "
          f"{rec['seconds']:.0f} s", flush=True)
    return rec


# ----------------------------------------------------------------------------- report
def load_records() -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted(CACHE.glob("*/*/seed*.json"))]


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean and standard error of ``a - b`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    if len(d) == 0:
        return math.nan, math.nan, 0
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()), se, len(d)


def ensemble_estimates(records: list[dict[str, Any]], program: str = "recomil") -> list[tuple]:
    """Per cohort: AUC of single seed runs against the AUC of the mean test probability of M = 3
    seed runs, over every 3-subset of the recorded seeds (records with ``test_prob``; 4 seeds or more)."""
    from itertools import combinations

    from sklearn.metrics import roc_auc_score

    out = []
    for cohort in COHORTS:
        runs = [r for r in records if r["cohort"] == cohort and r["program"] == program and r.get("test_prob")]
        if len(runs) < 4:  # at least 4 subsets of 3, so that their sd is defined
            continue
        ids = sorted(runs[0]["test_ids"])
        if any(sorted(r["test_ids"]) != ids or "test_labels" not in r for r in runs):
            continue
        labels = np.array([dict(zip(runs[0]["test_ids"], runs[0]["test_labels"]))[i] for i in ids])
        probs = np.array([[dict(zip(r["test_ids"], r["test_prob"]))[i] for i in ids] for r in runs])
        single = np.array([roc_auc_score(labels, p) for p in probs])
        m = 3
        subs = list(combinations(range(len(runs)), m))
        aucs = np.array([roc_auc_score(labels, probs[list(sub)].mean(0)) for sub in subs])
        out.append((cohort, m, len(subs), single.mean(), single.std(ddof=1), aucs.mean(), aucs.std(ddof=1)))
    return out


def member_curves(records: list[dict[str, Any]]) -> list[tuple]:
    """Per cohort and program whose records keep every ensemble member's test probabilities
    (``member_test_prob``): for M = 1 .. members, the test AUC of the mean probability of the first
    M members, mean ± sd over seeds; and the sd of the single members' AUC within a seed (averaged
    over seeds). Rows: ``(cohort, program, seeds, M, mean AUC, sd AUC, member sd within a seed)``."""
    from sklearn.metrics import roc_auc_score

    out = []
    for cohort in COHORTS:
        for program in VARIANTS:
            runs = [r for r in records if r["cohort"] == cohort and r["program"] == program
                    and r.get("member_test_prob")]
            if len(runs) < 2:
                continue
            n_members = min(len(r["member_test_prob"]) for r in runs)
            per_seed = []
            for r in runs:
                probs, labels = np.array(r["member_test_prob"], float)[:n_members], np.array(r["test_labels"])
                per_seed.append([roc_auc_score(labels, probs[:m].mean(0)) for m in range(1, n_members + 1)]
                                + [float(np.std([roc_auc_score(labels, q) for q in probs], ddof=1))])
            a = np.array(per_seed)
            for m in range(1, n_members + 1):
                out.append((cohort, program, len(runs), m, a[:, m - 1].mean(), a[:, m - 1].std(ddof=1),
                            a[:, -1].mean()))
    return out


def code_of(runs: Any) -> str:
    """The commits (short) and params hashes of the records behind one mean: a mean over records made by
    different code or params shows more than one; records from before provenance was kept say so, and
    records derived from another program's run (:func:`derive`) are marked ``replayed from <program>``."""
    keys = sorted({(f"{r['commit'][:9]}/{r['params_sha256'][:8]}" if r.get("commit") else "unrecorded")
                   + (f" replayed from {r['derived_from']['program']}" if r.get("derived_from") else "")
                   for r in runs})
    return ", ".join(keys)


def replay_log(rows: list[dict[str, Any]], overrides: dict[str, Any]) -> tuple[int, int]:
    """(selected epoch, last epoch run) of params.yaml's defaults with ``overrides``, replayed from a run's
    logged epochs (its ``fold_0.csv`` rows: validation AUC, accuracy and loss, training loss) through the
    trainer's own selection step."""
    import dataclasses

    from recomil.config import make_params
    from recomil.training.trainer import selection_score, selection_start, selection_step

    p = dataclasses.replace(make_params({}), **overrides)
    start = selection_start(p, p.save_policy)
    state = {"best_score": -math.inf, "best_val_loss": math.inf, "best_epoch": 0, "stale": 0, "stopped_early": False}

    def num(v: Any) -> float | None:
        return None if v is None or v == "" or float(v) != float(v) else float(v)

    for e, row in enumerate(rows, start=1):
        auc, acc, loss = num(row.get("val_auc")), num(row.get("val_acc")), num(row.get("val_loss"))
        score = selection_score(p.save_policy, auc, acc, float(row["loss"]), loss)
        selection_step(state, p, p.save_policy, e, score, loss, start)
        if state["stopped_early"] or e == p.epochs:
            return state["best_epoch"], e
    return state["best_epoch"], len(rows)


def derive(cohort_name: str, source: str, seed: int) -> str:
    """A ``recomil`` record from ``source``'s run of the same cohort and seed, where the defaults differ from
    ``source``'s params only in when a run stops (``patience_on``): the defaults' selection is replayed on the
    run's logged epochs, and where it selects the same epoch (which every epoch up to it shares) the test
    predictions are that run's; epochs run, training seconds and seconds per epoch are those of the epochs up
    to the defaults' stop. Returns what was done. The record says where it came from (``derived_from``)."""
    import csv

    src = CACHE / cohort_name / source / f"seed{seed}.json"
    out = CACHE / cohort_name / "recomil" / f"seed{seed}.json"
    log = src.with_name(f"seed{seed}_train_log") / "fold_0.csv"
    if out.is_file():
        return "a run of its own exists"
    if not src.is_file() or not log.is_file():
        return f"no {source} record with its epoch log"
    differ = {k for k in VARIANTS[source] if k != "patience_on"}
    if differ:
        raise ValueError(f"{source} differs from the defaults in {sorted(differ)}, not only in when it stops")
    rec = json.loads(src.read_text())
    with log.open() as fh:
        rows = list(csv.DictReader(fh))
    if replay_log(rows, VARIANTS[source]) != (rec["best_epoch"], rec["epochs_run"]):
        return f"the replay of {source}'s own rule does not give its selected and last epochs: not derived"
    best, stop = replay_log(rows, {})
    if best != rec["best_epoch"]:
        return f"the defaults select epoch {best}, {source}'s run epoch {rec['best_epoch']}: needs a run of its own"
    seconds = [float(r["epoch_seconds"]) for r in rows[:stop]]
    new = {**rec, "program": "recomil", "epochs_run": stop, "epoch_seconds": float(np.mean(seconds)),
           "train_seconds": round(sum(seconds), 1),
           "seconds": round(rec["seconds"] - (rec["train_seconds"] - sum(seconds)), 1),
           "derived_from": {"program": source, "epochs_run": rec["epochs_run"],
                            "how": "the defaults' selection replayed on the logged epochs selects the same epoch"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(new, indent=1))
    keep = out.with_name(f"seed{seed}_train_log")
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    with (keep / "fold_0.csv").open("w", newline="") as fh:  # the epochs the defaults run
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:stop])
    return f"derived: selected epoch {best}, {stop} epochs instead of {rec['epochs_run']}"


def provenance(params: Any) -> dict[str, str]:
    """The commit of this project (``-dirty`` when recomil/, stages/ or this script differ from it) and
    a hash of the params a unit ran with."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "recomil", "stages", "benchmarks/vs_original.py")
    text = json.dumps(params, sort_keys=True, default=str)
    return {"commit": git("rev-parse", "HEAD") + ("-dirty" if dirty else ""),
            "params_sha256": hashlib.sha256(text.encode()).hexdigest()}


def report(records: list[dict[str, Any]]) -> str:
    lines = ["# recomil vs the original ReCo-MIL", "",
             "Written by `python benchmarks/vs_original.py` (see its docstring). Test metrics of each program "
             "with its own defaults on the same cohort files, train/test split and training seeds; "
             "mean ± sd (sample) over seeds; Δ = paired difference to the original (same cohort and "
             "seed) ± its standard error. Seconds per epoch: training pass plus validation, each "
             "program's own measure, with the torch threads per process given below; on this 2-core "
             "machine at most two 1-thread units ran at once (one per core), so both programs' epochs "
             "were timed under the same load.", ""]
    if META.is_file():
        m = json.loads(META.read_text())
        lines += [f"Last run: `{m['command']}` on {m['date']} ({m['machine']}).", ""]
    lines += ["| cohort | program | seeds | AUC | acc | balanced acc | Δ AUC vs original | epochs | selected epoch "
              "| s/epoch | epoch ratio vs original | peak MB (median) | code |", "|" + " --- |" * 13]
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["cohort"], r["program"]), {})[r["seed"]] = r
    for cohort in [c for c in COHORTS if any(k[0] == c for k in by)]:
        base = by.get((cohort, "original"), {})
        for program in PROGRAMS:
            runs = by.get((cohort, program))
            if not runs:
                continue
            def ms(key: str, runs=runs) -> str:
                v = np.array([r[key] for r in runs.values() if r.get(key) is not None], float)
                if len(v) == 0:
                    return "-"
                return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"
            diff = "-"
            ratio = "-"
            if program != "original" and base:
                m, se, n = paired({s: r["auc"] for s, r in runs.items()}, {s: r["auc"] for s, r in base.items()})
                if n:
                    diff = f"{m:+.3f} ± {se:.3f} (n={n})" if n > 1 else f"{m:+.3f} (n=1)"
                ratios = [runs[s]["epoch_seconds"] / base[s]["epoch_seconds"] for s in set(runs) & set(base)
                          if runs[s].get("epoch_seconds") and base[s].get("epoch_seconds")]
                if ratios:
                    ratio = f"{np.mean(ratios):.2f}"
            ep = np.mean([r["epochs_run"] for r in runs.values()])
            spe = [r["epoch_seconds"] for r in runs.values() if r.get("epoch_seconds")]
            peak = float(np.median([r["peak_rss_mb"] for r in runs.values()]))
            sel = [r["best_epoch"] for r in runs.values() if r.get("best_epoch") is not None]
            lines.append(f"| {cohort} | {program} | {len(runs)} | {ms('auc')} | {ms('acc')} | {ms('balanced_acc')} "
                         f"| {diff} | {ep:.1f} | {f'{np.mean(sel):.1f}' if sel else '-'} "
                         f"| {f'{np.mean(spe):.2f}' if spe else '-'} | {ratio} | {peak:.0f} "
                         f"| {code_of(runs.values())} |")
    notes = sorted({f"{r['cohort']} {r['program']}: {r['note']}" for r in records if r.get("note")})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    variant_rows = []
    for cohort in COHORTS:
        mine = by.get((cohort, "recomil"), {})
        for program in VARIANTS:
            other = by.get((cohort, program), {})
            if program == "recomil" or not mine or not other:
                continue
            m, se, n = paired({s: r["auc"] for s, r in mine.items()}, {s: r["auc"] for s, r in other.items()})
            if not n:
                continue
            seeds = sorted(set(mine) & set(other))
            sd = [float(np.std([runs[s_]["auc"] for s_ in seeds], ddof=1)) if n > 1 else math.nan
                  for runs in (mine, other)]
            cost = [np.mean([runs[s_].get("train_seconds") or math.nan for s_ in seeds]) for runs in (mine, other)]
            def fmt(x: float, spec: str) -> str:
                return "-" if not np.isfinite(x) else format(x, spec)
            variant_rows.append(f"| {cohort} | {program} | {n} | {m:+.3f} ± {fmt(se, '.3f')} | {fmt(sd[0], '.3f')} "
                                f"| {fmt(sd[1], '.3f')} | {fmt(cost[0], '.0f')} | {fmt(cost[1], '.0f')} |")
    if variant_rows:
        lines += ["", "Defaults against the variants (same cohort and seeds): Δ AUC = recomil (defaults) − variant, "
                  "± its standard error; sd of the test AUC over those seeds; training seconds of the whole "
                  "result (every member's epochs; - where the record predates it).", "",
                  "| cohort | variant | seeds | Δ AUC (recomil − variant) | sd recomil | sd variant | train s recomil "
                  "| train s variant |", "|" + " --- |" * 8, *variant_rows]
    ens = [(program, *row) for program in VARIANTS for row in ensemble_estimates(records, program)]
    if ens:
        lines += ["", "Averaging seeds (what `ensemble: M` buys, estimated from the recorded test probabilities of "
                  "a program's seed runs; each seed run also drew its own validation split, as the further "
                  "members of a real ensemble with `ensemble_val: resplit` do; the subsets overlap, so their sd "
                  "understates the spread of independent ensembles): test AUC of "
                  "single runs against that of the M-seed mean probability, over every M-subset of the seeds.", "",
                  "| cohort | program | M | subsets | single-run AUC (mean ± sd) | M-seed mean-probability AUC "
                  "(mean ± sd) |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c} | {pr} | {m} | {n} | {a:.3f} ± {sa:.3f} | {b:.3f} ± {sb:.3f} |"
                  for pr, c, m, n, a, sa, b, sb in ens]
    curves = member_curves(records)
    if curves:
        lines += ["", "Ensemble size within the same runs (programs whose records keep every member's test "
                  "probabilities): test AUC of the mean probability of the first M members of each seed's "
                  "ensemble (M = 1 is the run without an ensemble), mean ± sd over seeds; and the sd of the "
                  "single members' AUC within one seed's ensemble, averaged over seeds.", "",
                  "| cohort | program | seeds | M | AUC of the first M members (mean ± sd over seeds) "
                  "| member sd within a seed |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c} | {pr} | {n} | {m} | {a:.3f} ± {sa:.3f} | {w:.3f} |" for c, pr, n, m, a, sa, w in curves]
    lines += ["", "Cohorts (demo generator settings, original's C16 pkl layout):", ""]
    for name, c in COHORTS.items():
        if "classic" in c:
            lines.append(f"- `{name}`: the classic MIL set `{c['classic']}` (`--data-root`), a fixed stratified "
                         f"{100 * c['test_share']:.0f} % of its bags as test (split seed {c['split_seed']}); the "
                         f"original trains dual-scale only, so both programs read every bag at both scales.")
            continue
        lines.append(f"- `{name}`: D {c['demo_feat_dim']}, {c['demo_train_slides']} training / "
                     f"{c['demo_test_slides']} test slides, {c['demo_min_patches']}–{c['demo_max_patches']} "
                     f"high-magnification patches, tumour {100 * c['demo_tumour_min']:.1f}–"
                     f"{100 * c['demo_tumour_max']:.0f} % of a positive slide's patches, generator seed "
                     f"{c['demo_seed']}.")
    lines += ["", "Variants: " + "; ".join(f"`{k}`: " + (", ".join(f"`{a}: {b}`" for a, b in v.items()) or
                                                    "params.yaml's defaults")
                                 + (f" (grown from `{GROWS[k]}`'s records: only the further members trained)"
                                    if k in GROWS else "") for k, v in VARIANTS.items()
                                 if k != "recomil-original") + "."]
    lines += ["", "`recomil-original` runs recomil with " + ", ".join(f"`{k}: {v}`" for k, v in ORIGINAL.items())
              + " (README, \"Coming from the original\")."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", type=Path, help="checkout of zsszc/ReCo-MIL (outside this project)")
    ap.add_argument("--cohorts", nargs="*", default=list(COHORTS), choices=list(COHORTS))
    ap.add_argument("--programs", nargs="*", default=list(DEFAULT_PROGRAMS), choices=list(PROGRAMS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT[0], help="folder holding musk1/ and elephant/")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "recomil-vs-original")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--derive-from", help="write `recomil` records from this program's runs of --cohorts and "
                    "--seeds where they differ only in when a run stops (see derive())")
    ap.add_argument("--results", type=Path, help="keep the unit records and the report in this folder instead of "
                    "benchmarks/ (e.g. a GPU machine's run, which must not mix with this machine's)")
    ap.add_argument("--recomil-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--original-predict", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.results:
        global CACHE, REPORT, META
        CACHE, REPORT, META = args.results / "units", args.results / "vs_original.md", args.results / "meta.json"
    DATA_ROOT[0] = args.data_root.resolve()
    if args.recomil_child:
        return recomil_child(args.recomil_child)
    if args.original_predict:
        return original_predict(*map(Path, args.original_predict))
    if args.derive_from:
        for cohort in args.cohorts:
            for seed in args.seeds:
                print(f"[{cohort} seed {seed}] {derive(cohort, args.derive_from, seed)}")
        args.report_only = True
    if not args.report_only:
        original = args.original.resolve() if args.original else None
        if original is None:
            print("vs_original: no --original checkout given; the original's units are skipped", file=sys.stderr)
        elif not (original / "train_recomil_v3.py").is_file():
            sys.exit(f"error: {original}: not a checkout of zsszc/ReCo-MIL (no train_recomil_v3.py)")
        else:
            META.parent.mkdir(parents=True, exist_ok=True)
            import torch

            gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
            META.write_text(json.dumps({
                "command": shlex.join(["python", "benchmarks/vs_original.py", *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{os.cpu_count()} cores, {args.threads} thread(s) per process{gpu}"}))
        # seed-major order: every cohort and program gets its first seeds before any gets its fifth
        for seed in args.seeds:
            for cohort in args.cohorts:
                for program in args.programs:
                    run_unit(cohort, program, seed, args.work, original, args.threads)
                    REPORT.write_text(report(load_records()))
    REPORT.write_text(report(load_records()))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
