"""Where does a seed's grip come from? Model-selection rules replayed on one training per seed.

Usage (one training at a time; resumable: every finished unit is cached as JSON)::

    python benchmarks/selection_replay.py --cohorts c768 --seeds 1 2 3 4 5
    python benchmarks/selection_replay.py --cohorts c768 --seeds 1 --kmeans-seed 4   # swap one part
    python benchmarks/selection_replay.py --report-only          # rebuild the Markdown

Each unit trains recomil with ``params.yaml``'s defaults on a cohort of
``benchmarks/vs_original.py`` (the same cohort files, split and seed as its ``recomil`` runs) for
every one of the ``epochs`` (patience set to ``epochs``, so nothing stops early) and keeps, per
epoch, the logged validation metrics and the test slides' probabilities of that epoch's weights.
The training is not changed: the trainer's validation call is wrapped so that the same weights
also predict the test slides (in float32, as the evaluate stage does). Every selection rule is then
replayed offline through the trainer's own :func:`recomil.training.trainer.selection_step`, so the
``defaults`` rule must give exactly the test AUC of ``vs_original.py``'s ``recomil`` run of that
seed (the report checks it). Rules:

- ``defaults``: ``save_policy: joint``, ``tie_break: val_loss``, selection after warm-up, patience
  10 after warm-up reset by a score gain (``patience_on: score``; params.yaml);
- ``patience_on: selection``: the patience reset by every selected epoch, tie-breaks included (session 20);
- ``val_loss``, ``val_auc``: the same with that ``save_policy``;
- ``stop epoch``: the weights of the epoch where the defaults stop (no selection);
- ``epoch 50``: the last epoch of a full run (``save_policy: last``);
- ``mean 13..stop`` / ``mean 13..50``: the mean test probability of every candidate epoch's
  weights up to the defaults' stop / to the end (a snapshot ensemble: no selection, no extra
  training); ``snapshots: 5``: of the 5 epochs that the key ``snapshots: 5`` keeps (13, 22, 32, 41,
  50; :func:`recomil.training.trainer.snapshot_epochs`), exactly what that key's run predicts;
  ``mean 46..50``: of the last five epochs.

A rule that is not better on a seed whose defaults did badly points at training (weights, bag
order, the slides held out), not at selection, as the source of the spread. ``--split-seed`` and
``--kmeans-seed`` take one part of a run from another seed (the validation slides the split stage
holds out; the k-means prototypes) while the training seed stays: the report's second table says
which part a seed's result follows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import vs_original as vs  # noqa: E402

CACHE = HERE / "results" / "selection_replay"
REPORT = HERE / "selection_replay.md"
META = HERE / "results" / "selection_replay_meta.json"  # how and when the recorded units ran (hand-written)


# ----------------------------------------------------------------------------- units
def unit_child(unit: Path) -> None:
    """Child: ingest, split, prototypes, then train every epoch keeping per-epoch test probabilities."""
    import pandas as pd

    import recomil.training.trainer as trainer
    from recomil.config import make_params
    from recomil.data.store import FeatureStore
    from recomil.inference import predict_bags, predict_probs
    from recomil.pipeline import data_stages, paths, prototypes_stage, train_stage
    from recomil.training.bags import BagSet

    os.chdir(unit)
    params = json.loads((unit / "params.json").read_text())
    swap = {k: params.pop(k) for k in ("split_seed", "kmeans_seed") if k in params}
    p = make_params(params)
    data_stages.run_ingest(p, progress=False)
    data_stages.run_split(dataclasses.replace(p, seed=swap.get("split_seed", p.seed)))
    for scale in ("high", "low"):
        prototypes_stage.run_prototypes(dataclasses.replace(p, seed=swap.get("kmeans_seed", p.seed)), scale)
    store = FeatureStore(paths.STORE)
    split = data_stages.load_split(paths.SPLIT)[0]
    test = BagSet(store, split["test"], store.scales)
    epochs: list[list[float]] = []

    def validate_and_test(model, bags, amp=None, batch=1):  # the trainer's validation call, plus the test slides
        out = predict_probs(model, bags, amp, batch=batch)
        probs, _ = predict_bags(model, (test.bag(j) for j in range(len(test))))
        epochs.append(probs[:, 1].round(6).tolist())
        return out

    trainer.predict_probs = validate_and_test
    train_stage.run_train(p, progress=False)
    log = pd.read_csv("results/train_log/fold_0.csv")
    rec = {"test_labels": test.labels.tolist(), "test_prob": epochs,
           **{k: log[k].tolist() for k in ("loss", "val_auc", "val_acc", "val_loss", "epoch_seconds")}}
    (unit / "child.json").write_text(json.dumps(rec))


def unit_name(seed: int, split_seed: int | None = None, kmeans_seed: int | None = None) -> str:
    return (f"seed{seed}" + (f"-split{split_seed}" if split_seed is not None else "")
            + (f"-kmeans{kmeans_seed}" if kmeans_seed is not None else ""))


def run_unit(cohort_name: str, seed: int, work: Path, threads: int, split_seed: int | None = None,
             kmeans_seed: int | None = None) -> dict[str, Any]:
    name = unit_name(seed, split_seed, kmeans_seed)
    out = CACHE / cohort_name / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    from recomil.config import make_params

    cohort = vs.make_cohort(cohort_name, work)
    unit = work / "units" / cohort_name / name
    shutil.rmtree(unit, ignore_errors=True)
    unit.mkdir(parents=True)
    epochs = make_params({}).epochs
    params = {"dataset": "c16", "root_dir_high": str(cohort), "root_dir_low": str(cohort),
              "train_list": str(cohort / "train_list.txt"), "test_csv": str(cohort / "test_labels.csv"),
              "seed": seed, "wandb_mode": "disabled", "bootstrap": 0, "patience": epochs,
              **{k: v for k, v in (("split_seed", split_seed), ("kmeans_seed", kmeans_seed)) if v is not None}}
    (unit / "params.json").write_text(json.dumps(params))
    started = time.perf_counter()
    vs._run([sys.executable, __file__, "--child", str(unit)], unit, threads, unit / "log.txt")
    rec = {"cohort": cohort_name, "seed": seed, "split_seed": split_seed, "kmeans_seed": kmeans_seed,
           "threads": threads,
           "seconds": round(time.perf_counter() - started, 1), **json.loads((unit / "child.json").read_text()),
           **vs.provenance({"cohort": vs.COHORTS[cohort_name], "params": params})}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(rec))
    out.with_suffix(".tmp").replace(out)
    if (unit / "log.txt").is_file():  # the run's own output (the fit's lines, each epoch): its last 256 kB
        out.with_name(f"{name}_log.txt").write_bytes((unit / "log.txt").read_bytes()[-256_000:])
    shutil.rmtree(unit, ignore_errors=True)
    print(f"[{cohort_name} {name}] {len(rec['loss'])} epochs, {rec['seconds']:.0f} s", flush=True)
    return rec


# ----------------------------------------------------------------------------- replay
def replay(rec: dict[str, Any], **overrides: Any) -> tuple[int, int]:
    """(selected epoch, last epoch run) of params.yaml's defaults with ``overrides``, replayed from the
    unit's logged epochs through the trainer's own selection step (:func:`vs_original.replay_log`)."""
    keys = ("loss", "val_auc", "val_acc", "val_loss")
    return vs.replay_log([dict(zip(keys, row)) for row in zip(*(rec[k] for k in keys))], overrides)


def _fmt(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


def test_auc(rec: dict[str, Any], epochs: list[int]) -> float:
    """Test AUC of the mean probability of the given epochs' weights (``nan`` past the logged epochs)."""
    from sklearn.metrics import roc_auc_score

    if not epochs or max(epochs) > len(rec["test_prob"]):
        return float("nan")
    return float(roc_auc_score(rec["test_labels"], np.mean([rec["test_prob"][e - 1] for e in epochs], axis=0)))


def _first_candidate() -> int:
    """The defaults' first selectable epoch (13), as the trainer computes it."""
    from recomil.config import make_params
    from recomil.training.trainer import selection_start

    p = make_params({})
    return selection_start(p, p.save_policy)


def _snapshot_epochs(k: int) -> list[int]:
    from recomil.config import make_params
    from recomil.training.trainer import snapshot_epochs

    return snapshot_epochs(make_params({"snapshots": k}))


RULES: dict[str, Callable[[dict[str, Any]], float]] = {
    "defaults": lambda r: test_auc(r, [replay(r)[0]]),
    "val_loss": lambda r: test_auc(r, [replay(r, save_policy="val_loss")[0]]),
    "val_auc": lambda r: test_auc(r, [replay(r, save_policy="val_auc")[0]]),
    "stop epoch": lambda r: test_auc(r, [replay(r)[1]]),
    "epoch 50": lambda r: test_auc(r, [50]),
    "mean 13..stop": lambda r: test_auc(r, list(range(_first_candidate(), replay(r)[1] + 1))),
    "mean 13..50": lambda r: test_auc(r, list(range(_first_candidate(), 51))),
    "snapshots: 5": lambda r: test_auc(r, _snapshot_epochs(5)),
    "mean 46..50": lambda r: test_auc(r, list(range(46, 51))),
    "patience_on: selection": lambda r: test_auc(r, [replay(r, patience_on="selection")[0]]),  # session 20
}


def report(records: list[dict[str, Any]]) -> str:
    lines = ["# Model selection replayed: where the seed's grip comes from", "",
             "Written by `python benchmarks/selection_replay.py` (see its docstring). One training per seed "
             "with params.yaml's defaults and no early stop; every rule replayed on its logged epochs. Test "
             "AUC per seed, mean ± sd (sample) over seeds, Δ = rule − defaults (paired, ± standard error).", ""]
    if META.is_file():
        lines += [f"Last run: {json.loads(META.read_text())['note']}", ""]
    vs_recs = {(r["cohort"], r["seed"]): r for r in vs.load_records() if r["program"] == "recomil"}
    def plain(r: dict[str, Any]) -> bool:
        return r.get("split_seed") is None and r.get("kmeans_seed") is None

    for cohort in sorted({r["cohort"] for r in records if plain(r)}):
        runs = sorted((r for r in records if r["cohort"] == cohort and plain(r)), key=lambda r: r["seed"])
        seeds = [r["seed"] for r in runs]
        lines += [f"## {cohort}", "", "| rule | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | mean ± sd | Δ vs defaults |", "| --- |" + " --- |" * (len(seeds) + 2)]
        base = np.array([RULES["defaults"](r) for r in runs])
        for name, rule in RULES.items():
            a = np.array([rule(r) for r in runs])
            sd = f"{a.std(ddof=1):.3f}" if len(a) > 1 else "-"
            d = a - base
            delta = "-" if name == "defaults" else (
                f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}" if len(d) > 1 else f"{d.mean():+.3f}")
            lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in a) + f" | {a.mean():.3f} ± {sd} | {delta} |")
        same = [s for s, b in zip(seeds, base)
                if (cohort, s) in vs_recs and abs(vs_recs[(cohort, s)]["auc"] - b) < 1e-9]
        known = [s for s in seeds if (cohort, s) in vs_recs]
        lines += ["", f"Check: the replayed `defaults` equal the test AUC of `vs_original.py`'s `recomil` run on "
                  f"{len(same)} of the {len(known)} seeds it has ({', '.join(map(str, known)) or 'none'})."]
        s20 = {r["seed"]: r["auc"] for r in vs.load_records()
               if r["program"] == "recomil-s20" and r["cohort"] == cohort}
        hits = [s for s, r in zip(seeds, runs) if s in s20 and abs(RULES["patience_on: selection"](r) - s20[s]) < 1e-9]
        lines += [f"Check: the replayed `patience_on: selection` equal the test AUC of the `recomil-s20` run (session "
                  f"20's defaults) on {len(hits)} of the {len([s for s in seeds if s in s20])} seeds it has.", ""]
        best = [replay(r)[0] for r in runs]
        stops = [replay(r)[1] for r in runs]
        lines += ["Selected / stop epoch of the defaults per seed: "
                  + ", ".join(f"{s}: {b}/{e}" for s, b, e in zip(seeds, best, stops)) + "."]
        before = [replay(r, patience_on="selection") for r in runs]
        lines += ["Selected / stop epoch with `patience_on: selection` (the defaults of session 20) per seed: "
                  + ", ".join(f"{s}: {b}/{e}" for s, (b, e) in zip(seeds, before)) + "; epochs run "
                  f"{np.mean([e for _, e in before]):.1f} against the defaults' {np.mean(stops):.1f}."]
        made = sorted({r.get("commit", "unrecorded")[:9] for r in runs})
        lines += [f"Made by: {', '.join(made)} (commit of the code that trained the units)."]
        secs = [r["seconds"] for r in runs]
        lines += [f"Seconds per unit ({records[0].get('threads', 1)} thread): {np.mean(secs):.0f} (all epochs, "
                  "with the test slides predicted after each).", ""]
        swaps = sorted((r for r in records if r["cohort"] == cohort and not plain(r)), key=lambda r: r["seed"])
        if swaps:
            own = {r["seed"]: RULES["defaults"](r) for r in runs}
            own.update({s: v["auc"] for (c, s), v in vs_recs.items() if c == cohort and s not in own})
            lines += ["One part from another seed (defaults rule): the test AUC follows the part that decides it.", "",
                      "| training seed | split (validation slides) from | k-means from | test AUC "
                      "| the training seed's own run | the other seed's own run |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for r in swaps:
                other = r.get("split_seed") if r.get("split_seed") is not None else r.get("kmeans_seed")
                lines.append(f"| {r['seed']} | seed {r.get('split_seed') or r['seed']} | seed "
                             f"{r.get('kmeans_seed') or r['seed']} | {RULES['defaults'](r):.3f} | "
                             f"{_fmt(own.get(r['seed']))} | {_fmt(own.get(other))} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def load_records() -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted(CACHE.glob("*/seed*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", nargs="*", default=["c768"], choices=list(vs.COHORTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "recomil-vs-original")
    ap.add_argument("--split-seed", type=int, help="the split stage (validation slides) from this seed")
    ap.add_argument("--kmeans-seed", type=int, help="the k-means prototypes from this seed")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return unit_child(args.child)
    if not args.report_only:
        for seed in args.seeds:
            for cohort in args.cohorts:
                run_unit(cohort, seed, args.work, args.threads, args.split_seed, args.kmeans_seed)
                REPORT.write_text(report(load_records()))
    REPORT.write_text(report(load_records()))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
