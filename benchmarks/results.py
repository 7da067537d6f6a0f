"""Evidence in one command: writes ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/results.py                       # everything, the full specification
    python benchmarks/results.py --sections accuracy   # one part (others are read from their caches)
    python benchmarks/results.py --datasets musk1 elephant --seeds 1 2 3 --folds 5

Parts (``--sections``):

- ``accuracy``: k-fold cross-validated test metrics of ReCo-MIL with its defaults, the ABMIL
  baseline and ablations (``ROWS``) on the demo cohort, a rarer demo variant and the real MIL
  sets under ``--data-root`` (musk1, elephant). Every row uses the same folds and seeds. Each
  (dataset, seed, row) is one job in its own directory (split, prototypes, train, evaluate);
  ``--workers`` jobs run side by side, ``--threads`` torch threads each.
- ``speed``: the model-step, store-vs-pkl and k-means benchmarks (their scripts, run here), and a
  cold ``dvc repro`` of a fresh clone timed stage by stage.
- ``scaling``: one training epoch (the train stage, ``epochs: 1``) against the number of slides
  and against the bag size, each point in its own process; fitted power-law exponents.

Every finished unit is cached as JSON under ``benchmarks/results/`` (so an interrupted run
resumes, and the figures behind the Markdown stay inspectable); ``RESULTS.md`` is rebuilt from
those files at the end of every run, with the machine, versions, date and the command of each part.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
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
CACHE = HERE / "results"

ROWS: dict[str, dict[str, Any]] = {
    "ReCo-MIL (defaults)": {},
    "ABMIL baseline": {"model": "abmil"},
    "no rarity gate": {"outlier_alpha_high": 0.0, "outlier_alpha_low": 0.0},
    "no recalibration": {"recalibrate": False},
    "high scale only": {"use_low_scale": False},
    "graph reducer": {"use_graph_reducer_high": True, "use_graph_reducer_low": True},
    "no orthogonal term": {"lambda_ortho_high": 0.0, "lambda_ortho_low": 0.0},
    "original early stopping": {"early_stop_after_warmup": False},
    "validation split 0.2": {"val_split": 0.2},
    "last epoch, no selection": {"save_policy": "last"},
}
DUAL_ONLY = {"high scale only"}
# Rows that check the training protocol (selection, early stopping, validation size) rather than
# a component of the model; reported apart from the baseline-and-ablation grid.
PROTOCOL_ROWS = ("original early stopping", "validation split 0.2", "last epoch, no selection")
GRID_ROWS = tuple(r for r in ROWS if r not in PROTOCOL_ROWS)
DEMO_SETS: dict[str, dict[str, Any]] = {
    "demo": {"dataset": "demo"},
    "demo-rare": {"dataset": "demo", "demo_tumour_min": 0.002, "demo_tumour_max": 0.02},
}
REAL_SETS = ("musk1", "elephant")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# ----------------------------------------------------------------------------------- accuracy
def dataset_params(name: str, data_root: Path) -> dict[str, Any] | None:
    """Params of one dataset, or None when its files are missing."""
    if name in DEMO_SETS:
        return dict(DEMO_SETS[name])
    root = data_root / name
    if not (root / "features").is_dir() or not (root / "labels.csv").is_file():
        return None
    return {"dataset": "folder", "root_dir_high": str((root / "features").resolve()),
            "labels_csv": str((root / "labels.csv").resolve())}


def _prepare_dataset(name: str, params: dict[str, Any], work: Path) -> Path:
    """Demo generation and ingest once per dataset (seed-independent); returns its directory."""
    from recomil.config import make_params
    from recomil.pipeline import data_stages

    home = work / name
    if (home / "data" / "store" / "manifest.csv").is_file():
        return home
    home.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(home)
    try:
        p = make_params({**params, "wandb_mode": "disabled"})
        if p.dataset == "demo":
            data_stages.run_demo(p)
        data_stages.run_ingest(p, progress=False)
    finally:
        os.chdir(cwd)
    return home


def _job(args: tuple[str, dict[str, Any], int, int, str, str, int]) -> dict[str, Any]:
    """One (dataset, seed, row) in its own directory: split, prototypes, train, evaluate.

    The split and the prototypes depend on the dataset and the seed only, so every row of a seed
    sees the same folds and the same initial prototypes.
    """
    name, params, seed, folds, row, work, threads = args
    out = CACHE / "accuracy" / name / f"seed{seed}" / f"{slug(row)}.json"
    if out.is_file():
        return json.loads(out.read_text())
    import torch

    from recomil.config import make_params
    from recomil.pipeline import data_stages, evaluate_stage, prototypes_stage, train_stage

    torch.set_num_threads(threads)
    home = Path(work) / name
    job = home / f"seed{seed}" / slug(row)
    shutil.rmtree(job, ignore_errors=True)
    (job / "data").mkdir(parents=True)
    for sub in ("store", "demo"):
        target = home / "data" / sub
        if target.exists():
            (job / "data" / sub).symlink_to(target.resolve(), target_is_directory=True)
    os.chdir(job)
    p = make_params({**params, "seed": seed, "folds": folds, "wandb_mode": "disabled", **ROWS[row]})
    t = time.perf_counter()
    data_stages.run_split(p)
    for scale in ("high", "low"):
        prototypes_stage.run_prototypes(p, scale)
    summary = train_stage.run_train(p, progress=False)
    metrics = evaluate_stage.run_evaluate(p)
    rec = {"dataset": name, "seed": seed, "folds": folds, "row": row, "overrides": ROWS[row],
           "seconds": round(time.perf_counter() - t, 1),
           "per_fold": metrics.get("per_fold", [metrics]),
           "epochs": [f["epochs_run"] for f in summary["folds"]],
           "best_epochs": [f["best_epoch"] for f in summary["folds"]],
           "loc_auc": metrics.get("loc_auc"), "recomil_commit": _commit()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(out)
    print(f"[{name} seed {seed}] {row}: AUC {np.mean([f['auc'] for f in rec['per_fold']]):.3f} "
          f"({rec['seconds']:.0f} s)", flush=True)
    os.chdir(REPO)
    shutil.rmtree(job, ignore_errors=True)
    return rec


def run_accuracy(datasets: list[str], seeds: list[int], folds: int, rows: list[str], workers: int,
                 threads: int, data_root: Path, work: Path) -> None:
    command = shlex.join(["python", "benchmarks/results.py", *sys.argv[1:]])
    jobs = []
    for name in datasets:
        params = dataset_params(name, data_root)
        if params is None:
            print(f"accuracy: {name} not found under {data_root}; skipped", file=sys.stderr)
            continue
        earlier = _read_meta(f"accuracy-{name}")
        runs = earlier.get("runs", [{k: earlier[k] for k in ("command", "date") if k in earlier}] if earlier else [])
        runs.append({"command": command, "date": time.strftime("%Y-%m-%d %H:%M")})
        _write_meta(f"accuracy-{name}", {"runs": runs})
        _prepare_dataset(name, params, work)
        use = [r for r in rows if not (r in DUAL_ONLY and name in REAL_SETS)]
        jobs += [(name, params, s, folds, r, str(work), threads) for s in seeds for r in use]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        for _ in pool.imap_unordered(_job, jobs):
            pass


EARLIER = CACHE / "earlier"  # records of an earlier training step, same layout as CACHE; read only


def load_accuracy(root: Path = CACHE) -> list[dict[str, Any]]:
    """Every cached accuracy unit under ``root`` (``CACHE`` or ``EARLIER``)."""
    return [json.loads(f.read_text()) for f in sorted((root / "accuracy").glob("*/seed*/*.json"))]


def _paired(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float]) -> tuple[float, float, int, int]:
    """Mean and standard error of ``a - b`` over shared (seed, fold) runs; wins of a; pairs."""
    keys = sorted(k for k in set(a) & set(b) if a[k] is not None and b[k] is not None)
    d = np.array([a[k] - b[k] for k in keys])
    if len(d) == 0:
        return math.nan, math.nan, 0, 0
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()), se, int((d > 0).sum()), len(d)


REMOVES = {"no rarity gate": "the rarity gate", "no recalibration": "prototype recalibration",
           "no orthogonal term": "the orthogonal term", "high scale only": "the low-magnification branch"}
REPLACES = {"ABMIL baseline": ("ReCo-MIL", "the ABMIL baseline"),
            "graph reducer": ("the MLP reducer (default)", "the graph reducer"),
            "original early stopping": ("patience counted after warm-up (default)", "the original early stopping"),
            "validation split 0.2": ("a 10 % validation split (default)", "a 20 % validation split"),
            "last epoch, no selection": ("selection and early stopping on validation (default)",
                                         "training all epochs and keeping the last")}


def beyond_two_se(diff: float, se: float) -> bool:
    """The report's one significance rule: a difference counts where it exceeds two standard errors."""
    return abs(diff) > 2 * se


def verdict(row: str, m: float, se: float) -> str:
    """One sentence from a paired AUC difference ``m`` (row minus defaults) and its standard error."""
    lower, higher = beyond_two_se(m, se) and m < 0, beyond_two_se(m, se) and m > 0
    if row in REMOVES:
        comp = REMOVES[row]
        return (f"{comp} helps" if lower else f"{comp} hurts here" if higher
                else f"{comp} does not measurably help here")
    if row in REPLACES:
        default, other = REPLACES[row]
        return (f"{default} beats {other}" if lower else f"{other} beats {default}" if higher
                else f"{default} and {other} do not differ measurably")
    return f"{row}: " + ("lower AUC" if lower else "higher AUC" if higher else "no measurable difference")


def coverage(records: list[dict[str, Any]], seeds: tuple[int, ...] = (1, 2, 3),
             among: tuple[str, ...] = tuple(ROWS)) -> list[str]:
    """The (dataset, row) units among rows ``among`` that have no cached result, one line per dataset."""
    have = {(r["dataset"], r["row"], r["seed"]) for r in records}
    out = []
    for ds in [*DEMO_SETS, *REAL_SETS]:
        rows = [r for r in among if not (r in DUAL_ONLY and ds in REAL_SETS)]
        gaps = [f"{row} (seeds {', '.join(str(s) for s in seeds if (ds, row, s) not in have)})"
                for row in rows if any((ds, row, s) not in have for s in seeds)]
        if len(gaps) == len(rows) and not any(d == ds for d, _, _ in have):
            out.append(f"{ds}: everything")
        elif gaps:
            out.append(f"{ds}: " + "; ".join(gaps))
    return out


def near_chance(ds: str, aucs: list[float]) -> str | None:
    """A warning sentence when the defaults' mean test AUC is within two standard errors of 0.5."""
    if len(aucs) < 2:
        return None
    m, se = float(np.mean(aucs)), float(np.std(aucs, ddof=1) / math.sqrt(len(aucs)))
    if beyond_two_se(m - 0.5, se):
        return None
    return (f"{ds}: ReCo-MIL (defaults) is not measurably better than chance here (AUC {m:.3f} +- {se:.3f}), "
            "so its comparisons on this data set say little about the components.")


def glance(verdicts: list[tuple[str, str, float, float]], datasets: list[str]) -> list[str]:
    """One table of every row's paired AUC difference against the defaults, data sets as columns.

    A cell is ``diff +- SE``, marked ``**`` where the difference exceeds two standard errors;
    ``n/a`` where the row does not apply (single-scale data), ``not run`` where no result is cached.
    """
    if not verdicts:
        return []
    got = {(ds, row): (m, se) for ds, row, m, se in verdicts}
    out = ["### At a glance", "",
           "Paired AUC difference against ReCo-MIL (defaults), row minus default, +- standard error; `**`: "
           "beyond two standard errors. Per-data-set tables and the sentences below give the details.", "",
           "| row | " + " | ".join(datasets) + " |", "| --- |" + " --- |" * len(datasets)]
    for row in [r for r in ROWS if r != "ReCo-MIL (defaults)"]:
        cells = []
        for ds in datasets:
            if row in DUAL_ONLY and ds in REAL_SETS:
                cells.append("n/a")
            elif (ds, row) not in got:
                cells.append("not run")
            else:
                m, se = got[(ds, row)]
                mark = "**" if beyond_two_se(m, se) else ""
                cells.append(f"{mark}{m:+.3f} +- {se:.3f}{mark}")
        out.append(f"| {row} | " + " | ".join(cells) + " |")
    return out + [""]


def accuracy_section(records: list[dict[str, Any]], root: Path = CACHE, earlier: str = "") -> list[str]:
    """The accuracy tables, glance table, coverage and verdicts of ``records`` (commands from ``root``).

    ``earlier``: a sentence saying which earlier training step measured the records; the section is
    then titled as such, its data-set headings say so, and it has no coverage list (nothing more of
    an earlier step is run).
    """
    title = "## Accuracy, earlier training step" if earlier else "## Accuracy"
    tag = ", earlier step" if earlier else ""
    if not records:
        return [] if earlier else [title, "", "Not run yet: `python benchmarks/results.py --sections accuracy`.", ""]
    lines = [title, "", *([earlier, ""] if earlier else []),
             "Test AUC and accuracy of each fold's best checkpoint on that fold's test slides: mean +- std over "
             "all (seed, fold) runs; `seed sd` is the standard deviation of the per-seed means. Every row of a "
             "dataset uses the same folds and seeds. `vs default`: mean paired AUC difference (row minus "
             "ReCo-MIL defaults) over the same (seed, fold) runs, +- its standard error, and how many runs the "
             "row won.", ""]
    intro = len(lines)
    by_ds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        by_ds.setdefault(r["dataset"], {}).setdefault(r["row"], []).append(r)
    verdicts = []
    cautions: list[str] = []
    order = [d for d in [*DEMO_SETS, *REAL_SETS] if d in by_ds] + sorted(set(by_ds) - {*DEMO_SETS, *REAL_SETS})
    for ds in order:
        rows = by_ds[ds]
        seeds = sorted({r["seed"] for rs in rows.values() for r in rs})
        folds = sorted({r["folds"] for rs in rows.values() for r in rs})
        meta = _read_meta(f"accuracy-{ds}", root) or _read_meta("accuracy", root)
        lines += [f"### {ds} ({folds[0]}-fold CV, seeds {seeds}{tag})", "",
                  *[f"Command: `{r.get('command', '?')}` (started {r.get('date', '?')})." for r in
                    meta.get("runs", [meta] if meta else [])], "",
                  "| row | AUC | seed sd | accuracy | vs default (AUC) | epochs run | runs | loc_auc |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        base = {(r["seed"], i): f["auc"] for r in rows.get("ReCo-MIL (defaults)", [])
                for i, f in enumerate(r["per_fold"])}
        if chance := near_chance(ds, [v for v in base.values() if v is not None]):
            cautions.append(chance)
        for row in [r for r in ROWS if r in rows]:
            rs = rows[row]
            auc = {(r["seed"], i): f["auc"] for r in rs for i, f in enumerate(r["per_fold"])}
            acc = [f["acc"] for r in rs for f in r["per_fold"]]
            aucs = np.array([v for v in auc.values() if v is not None], dtype=float)
            seed_means = [np.mean([f["auc"] for f in r["per_fold"] if f["auc"] is not None]) for r in rs]
            epochs = [e for r in rs for e in r["epochs"]]
            cmp = "-"
            if row != "ReCo-MIL (defaults)" and base:
                m, se, wins, n = _paired(auc, base)
                cmp = f"{m:+.3f} +- {se:.3f} ({wins}/{n})"
                if not math.isnan(m):
                    verdicts.append((ds, row, m, se))
            loc = [r["loc_auc"] for r in rs if r.get("loc_auc") is not None]
            seed_sd = f"{np.std(seed_means):.3f}" if len(seed_means) > 1 else "-"
            lines.append(f"| {row} | {aucs.mean():.3f} +- {aucs.std():.3f} | {seed_sd} "
                         f"| {np.mean(acc):.3f} +- {np.std(acc):.3f} | {cmp} | {np.mean(epochs):.1f} "
                         f"| {len(aucs)} | {f'{np.mean(loc):.3f}' if loc else '-'} |")
        lines.append("")
    at_a_glance = glance(verdicts, order)
    if at_a_glance and earlier:
        at_a_glance[0] += tag
    lines[intro:intro] = at_a_glance
    if earlier:
        lines += ["### What helps and what does not, earlier step", ""]
        lines += [f"- {c}" for c in cautions]
        lines += [f"- {ds}: {verdict(row, m, se)} ({m:+.3f} +- {se:.3f} AUC)." for ds, row, m, se in verdicts]
        return lines + [""]
    lines += ["### Coverage", "",
              "The full specification is 5 folds x seeds 1, 2, 3 x every row on every data set "
              "(`python benchmarks/results.py --sections accuracy` runs whatever is missing; finished units are "
              "skipped).", ""]
    for what, among in (("Baseline and ablations", GRID_ROWS), ("Training-protocol checks", PROTOCOL_ROWS)):
        gaps, listed = coverage(records, among=among), ", ".join(f"`{r}`" for r in among)
        if gaps:
            lines += [f"{what} ({listed}), not run yet:", "", *[f"- {m}" for m in gaps], ""]
        else:
            lines += [f"{what} ({listed}): complete on every data set.", ""]
    lines += ["### What helps and what does not", "",
              "Read from the paired differences above: a difference counts where it exceeds two standard errors "
              "(the (seed, fold) runs are treated as independent, which flatters the precision somewhat).", ""]
    lines += [f"- {c}" for c in cautions]
    if not verdicts and not cautions:
        lines.append("- No row besides the defaults has been run with this step yet (see Coverage).")
    for ds, row, m, se in verdicts:
        lines.append(f"- {ds}: {verdict(row, m, se)} ({m:+.3f} +- {se:.3f} AUC).")
    return lines + [""]


def earlier_only(earlier: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier step's records of (data set, row) pairs the current step has not run, with the
    earlier defaults row of each such data set (the base of its paired differences)."""
    have = {(r["dataset"], r["row"]) for r in current}
    kept = [r for r in earlier if (r["dataset"], r["row"]) not in have]
    sets = {r["dataset"] for r in kept if r["row"] != "ReCo-MIL (defaults)"}
    return [r for r in earlier if r["dataset"] in sets
            and ((r["dataset"], r["row"]) not in have or r["row"] == "ReCo-MIL (defaults)")]


def step_change_section(current: list[dict[str, Any]], earlier: list[dict[str, Any]], what: str) -> list[str]:
    """The defaults row of the current step against the earlier step's, paired on (seed, fold).

    One table row per data set that both steps ran, over the seeds the current step ran: mean +- std
    test AUC of each, the seed sd of
    each (standard deviation of the per-seed means), the paired difference (current minus earlier)
    +- its standard error with the runs the current step won, and the mean epochs run of each.
    """
    def runs(recs: list[dict[str, Any]], ds: str) -> list[dict[str, Any]]:
        return [r for r in recs if r["dataset"] == ds and r["row"] == "ReCo-MIL (defaults)"]

    out = []
    for ds in [d for d in [*DEMO_SETS, *REAL_SETS] if runs(current, d) and runs(earlier, d)]:
        now = runs(current, ds)
        was = [r for r in runs(earlier, ds) if r["seed"] in {n["seed"] for n in now}]  # the same seeds
        a = {(r["seed"], i): f["auc"] for r in now for i, f in enumerate(r["per_fold"])}
        b = {(r["seed"], i): f["auc"] for r in was for i, f in enumerate(r["per_fold"])}
        m, se, wins, n = _paired(a, b)
        cells = []
        for recs, aucs in ((now, a), (was, b)):
            vals = np.array([v for v in aucs.values() if v is not None], dtype=float)
            seed_means = [np.mean([f["auc"] for f in r["per_fold"] if f["auc"] is not None]) for r in recs]
            cells.append(f"{vals.mean():.3f} +- {vals.std():.3f} | {np.std(seed_means):.3f}")
        epochs = [np.mean([e for r in recs for e in r["epochs"]]) for recs in (now, was)]
        out.append(f"| {ds} | {cells[0]} | {cells[1]} | {m:+.3f} +- {se:.3f} ({wins}/{n}) "
                   f"| {epochs[0]:.1f} / {epochs[1]:.1f} |")
    if not out:
        return []
    return ["## What the current training step changed", "",
            f"ReCo-MIL (defaults) with the current step against the same row of the earlier step, on the same "
            f"folds and seeds. {what}", "",
            "| data set | AUC now | seed sd now | AUC earlier | seed sd earlier | now - earlier (AUC) "
            "| epochs run now / earlier |",
            "| --- | --- | --- | --- | --- | --- | --- |", *out, ""]


# -------------------------------------------------------------------------------------- speed
def run_speed(quick: bool) -> None:
    py = sys.executable
    steps = [
        ("model_step", [py, "benchmarks/model_step.py", *(["--sizes", "1000", "4000"] if quick else [])]),
        ("store_io", [py, "benchmarks/store_io.py", *(["--slides", "10"] if quick else [])]),
        ("kmeans", [py, "benchmarks/kmeans_vs_sklearn.py", *(["--rows", "100000", "--seeds", "1"] if quick else [])]),
    ]
    for name, cmd in steps:
        print(f"speed: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        _write_meta(name, {"command": " ".join(["python", *cmd[1:]])})
    _write_meta("repro", {"stages": time_cold_repro(),
                          "command": "git clone . <tmp> && dvc repro -s <stage>, in order"})


def time_cold_repro() -> list[dict[str, Any]]:
    """Clone the committed project, then time ``dvc repro -s`` of every stage in pipeline order."""
    import tempfile

    import yaml

    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    order = []
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        items = stage.get("foreach")
        order += [f"{name}@{i}" for i in items] if items else [name]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        for stage in order:
            t = time.perf_counter()
            subprocess.run([dvc, "repro", "-s", stage], cwd=clone, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            out.append({"stage": stage, "seconds": round(time.perf_counter() - t, 1)})
            print(f"repro: {stage} {out[-1]['seconds']} s", flush=True)
    return out


def speed_section() -> list[str]:
    lines = ["## Speed and memory", ""]
    for name, title in (("model_step", "Model step against bag size (fp32, bf16)"),
                        ("store_io", "Feature store against the original pkl files"),
                        ("kmeans", "Prototype k-means against scikit-learn")):
        md = HERE / f"{name}.md"
        meta = _read_meta(name)
        lines += [f"### {title}", ""]
        if not md.is_file() or not meta:
            lines += ["Not run yet: `python benchmarks/results.py --sections speed`.", ""]
            continue
        body = [ln for ln in md.read_text().splitlines() if not ln.startswith("# ")]
        lines += [f"Run by this command on {meta['date']}: `{meta['command']}`.", *body, ""]
    meta = _read_meta("repro")
    lines += ["### Cold `dvc repro` of the demo, stage by stage", ""]
    if not meta:
        return lines + ["Not run yet: `python benchmarks/results.py --sections speed`.", ""]
    total = sum(s["seconds"] for s in meta["stages"])
    lines += [f"A fresh clone of the committed project, `dvc repro -s <stage>` in pipeline order ({meta['date']}).",
              "", "| stage | seconds | share |", "| --- | --- | --- |"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['seconds'] / total:.0%} |" for s in meta["stages"]]
    return lines + [f"| total | {total:.1f} | |", ""]


# ------------------------------------------------------------------------------------ scaling
def _epoch_child(slides: int, patches: int, dim: int) -> dict[str, Any]:
    """One training epoch of the train stage on a generated cohort, in this (fresh) process."""
    import tempfile

    import torch

    from recomil.config import make_params
    from recomil.pipeline import data_stages, prototypes_stage, train_stage

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        p = make_params({"demo_train_slides": slides, "demo_test_slides": 2, "demo_feat_dim": dim,
                         "demo_min_patches": patches, "demo_max_patches": patches, "epochs": 2,
                         "warmup_epochs": 1, "freeze_protos_epochs": 0, "no_val": True, "wandb_mode": "disabled",
                         "kmeans_max_iter": 5})
        data_stages.run_demo(p)
        data_stages.run_ingest(p, progress=False)
        data_stages.run_split(p)
        for scale in ("high", "low"):
            prototypes_stage.run_prototypes(p, scale)
        base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        train_stage.run_train(p, progress=False)
        stage_seconds = time.perf_counter() - t
        log = np.genfromtxt("results/train_log/fold_0.csv", delimiter=",", names=True)
        seconds = float(np.atleast_1d(log["train_seconds"])[-1])  # the second epoch: no first-call warm-up
    return {"slides": slides, "patches": patches, "dim": dim, "seconds": seconds, "stage_seconds": stage_seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_train_mb": base_mb}


def run_scaling(quick: bool) -> None:
    slide_grid = [8, 16, 32] if quick else [8, 16, 32, 64]
    patch_grid = [500, 1000, 2000] if quick else [500, 1000, 2000, 4000, 8000]
    points = [("slides", s, 1000) for s in slide_grid] + [("patches", 8, n) for n in patch_grid]
    out = []
    for axis, slides, patches in points:
        res = subprocess.run([sys.executable, __file__, "--epoch-child", str(slides), str(patches), "768"],
                             cwd=REPO, capture_output=True, text=True, check=True)
        rec = {"axis": axis, **json.loads(res.stdout.strip().splitlines()[-1])}
        out.append(rec)
        print(f"scaling: {slides} slides x {patches} patches: {rec['seconds']:.1f} s, {rec['peak_mb']:.0f} MB",
              flush=True)
    _write_meta("scaling", {"points": out, "command": "python benchmarks/results.py --sections scaling"})


def fit_exponent(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y on log x (the b of y = a x^b)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def scaling_section() -> list[str]:
    meta = _read_meta("scaling")
    lines = ["## Scaling", ""]
    if not meta:
        return lines + ["Not run yet: `python benchmarks/results.py --sections scaling`.", ""]
    lines += [f"The train stage on generated demo cohorts (dual scale, D = 768, low = 1/4 of the high patches, "
              f"default model, no validation, 2 epochs), each point in a fresh process ({meta['date']}). Time is "
              "the second epoch's training pass as the stage logs it (`train_seconds` in "
              "`results/train_log/fold_0.csv`); peak memory is the process's peak resident set (the store is "
              "memory-mapped, so read features count while their pages are resident).", ""]
    for axis, label in (("slides", "slides (1,000 patches each)"), ("patches", "patches per slide (8 slides)")):
        pts = [p for p in meta["points"] if p["axis"] == axis]
        if len(pts) < 2:
            continue
        xs = [p[axis] for p in pts]
        lines += [f"| {label} | seconds | peak MB |", "| --- | --- | --- |"]
        lines += [f"| {p[axis]:,} | {p['seconds']:.1f} | {p['peak_mb']:.0f} |" for p in pts]
        te = fit_exponent(xs, [p["seconds"] for p in pts])
        me = fit_exponent(xs, [p["peak_mb"] for p in pts])
        lines += ["", f"Fitted exponents against {axis}: time ~ {axis}^{te:.2f}, peak memory ~ {axis}^{me:.2f}.", ""]
    return lines


# ------------------------------------------------------------------------------------- output
def _write_meta(name: str, meta: dict[str, Any]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "date": time.strftime("%Y-%m-%d %H:%M")}
    (CACHE / f"{name}.json").write_text(json.dumps(meta, indent=1))


def _read_meta(name: str, root: Path = CACHE) -> dict[str, Any]:
    f = root / f"{name}.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _commit() -> str:
    """The short git commit of the project (``?`` outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip() or "?"


def machine() -> list[str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    commit = _commit()
    return [f"- Machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GB, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
            f"- Versions: Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"recomil at commit {commit or '?'}",
            f"- Written: {time.strftime('%Y-%m-%d %H:%M')}"]


def write_results(path: Path) -> None:
    lines = ["# recomil: evidence", "",
             "Written by `python benchmarks/results.py` (see its docstring for the parts and options); every "
             "figure below comes from the JSON files under `benchmarks/results/` that the run wrote.", "",
             *machine(), "", *accuracy_section(load_accuracy())]
    if earlier := load_accuracy(EARLIER):
        step = _read_meta("step", EARLIER)
        what = (f"The earlier step is recomil at commit {step.get('commit', '?')}: {step.get('what', '?')}")
        lines += [*step_change_section(load_accuracy(), earlier, what),
                  *accuracy_section(earlier_only(earlier, load_accuracy()), EARLIER,
                                    earlier=f"Rows and data sets measured with the earlier training step only "
                                            f"(rows re-run with the current step are in the section above). {what}")]
    lines += [*speed_section(), *scaling_section()]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["accuracy", "speed", "scaling"],
                    choices=["accuracy", "speed", "scaling", "none"])
    ap.add_argument("--datasets", nargs="+", default=[*DEMO_SETS, *REAL_SETS])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per accuracy worker")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=REPO / ".recomil" / "results-work")
    ap.add_argument("--quick", action="store_true", help="smaller speed and scaling grids")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--epoch-child", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epoch_child:
        print(json.dumps(_epoch_child(*args.epoch_child)))
        return
    os.chdir(REPO)
    if "accuracy" in args.sections:
        run_accuracy(args.datasets, args.seeds, args.folds, args.rows, args.workers, args.threads,
                     args.data_root, args.work)
    if "speed" in args.sections:
        run_speed(args.quick)
    if "scaling" in args.sections:
        run_scaling(args.quick)
    write_results(args.out)


if __name__ == "__main__":
    main()
