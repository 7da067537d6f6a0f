"""Where the instance heads' fit (``inst_init: misvm``) spends its time, on one cohort's fold 0.

    python benchmarks/fit_profile.py --cohort dev768-a --seed 2 --work /tmp/recomil-epoch0

The unit is prepared as ``recipe_epoch0.py`` prepares it (ingest, split, prototypes of a
``vs_original.py`` cohort); the heads are then fitted exactly as the trainer fits them
(:func:`recomil.training.instance_init.init_instance_heads`, the params' defaults and ``--set``
overrides), with every logistic regression and every mi-SVM fit counted and timed: per scale, the
fit's seconds, the mi-SVM fits (cross-fitting folds and the final fit), their refit rounds (and how
many stopped at the ``inst_init_refits`` cap), the regressions, their rows, L-BFGS iterations and
seconds, and the time outside the regressions (reading and scoring the bags, the novelty's
distances). With ``--threads`` above 1 the cross-fitting fits run in threads and the per-fit counts
mix. Appends one record to ``results/fit_profile.json`` (commit, params, threads) and
prints a table row. Seconds depend on the machine's load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import recipe_epoch0  # noqa: E402

import recomil.training.instance_init as instance_init  # noqa: E402
from recomil.config import ConfigError, parse_overrides  # noqa: E402
from recomil.training.bags import BagSet  # noqa: E402
from recomil.training.trainer import member_seed  # noqa: E402

OUT = HERE / "results" / "fit_profile.json"


def profile(unit: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Fit fold 0's instance heads in ``unit`` and return the breakdown per scale."""
    regressions: list[dict[str, float]] = []
    misvm: list[dict[str, float]] = []
    real_logistic, real_misvm = instance_init.fit_logistic, instance_init.fit_misvm

    def logistic(x: Any, y: Any, c: float, balanced: bool = False, **kw: Any) -> Any:
        started = time.perf_counter()
        out = real_logistic(x, y, c, balanced, **kw)
        iters = getattr(out.model, "n_iter_", None)
        regressions.append({"rows": len(y), "iters": int(iters[0]) if iters is not None else -1,
                            "s": time.perf_counter() - started})
        return out

    def mi_svm(*args: Any, **kw: Any) -> Any:
        before, started = len(regressions), time.perf_counter()
        out = real_misvm(*args, **kw)
        misvm.append({"regressions": len(regressions) - before, "s": time.perf_counter() - started,
                      "bags_start": kw.get("start") == "bags"})
        return out

    cwd = os.getcwd()
    os.chdir(unit)
    instance_init.fit_logistic, instance_init.fit_misvm = logistic, mi_svm
    try:
        p, store, split, mp, model = recipe_epoch0.fold0_model(overrides)
        lines: list[str] = []
        marks: dict[str, tuple[int, int, float]] = {}  # scale -> (first regression, first mi-SVM fit, start)

        def log(line: str) -> None:  # the trainer's fit announces each scale before fitting it
            lines.append(line)
            if "fitting the instance head (" in line:
                marks[line.split("fitting the instance head (")[1].split(")")[0]] = (
                    len(regressions), len(misvm), time.perf_counter())

        started = time.perf_counter()
        instance_init.init_instance_heads(model, BagSet(store, split["train"], mp.scales), p,
                                          member_seed(p.seed, 0, 0), "fold 0", log=log)
        ended = time.perf_counter()
        parts = max(1, p.inst_init_pick_folds)
        order = sorted(marks, key=lambda k: marks[k][0])
        per_scale: dict[str, Any] = {}
        for i, scale in enumerate(order):
            r0, m0, t0 = marks[scale]
            r1, m1, t1 = marks[order[i + 1]] if i + 1 < len(order) else (len(regressions), len(misvm), ended)
            regs, fits = regressions[r0:r1], misvm[m0:m1]
            in_regressions = sum(r["s"] for r in regs)
            per_scale[scale] = {
                "seconds": round(t1 - t0, 1), "regression_s": round(in_regressions, 1),
                "outside_regressions_s": round(t1 - t0 - in_regressions, 1),
                "misvm_fits": len(fits),
                # regressions of one mi-SVM fit: the bag-label start (start: bags), one per part per refit
                # round, and the last fit on every slide's final positives
                "rounds": [(m["regressions"] - 1 - int(m["bags_start"])) // parts for m in fits],
                "regressions": len(regs),
                "rows_median": int(np.median([r["rows"] for r in regs])) if regs else 0,
                "iters_mean": round(float(np.mean([r["iters"] for r in regs])), 1) if regs else 0,
                "iters_max": int(max(r["iters"] for r in regs)) if regs else 0}
        print(f"fit: {ended - started:.1f} s in all", file=sys.stderr)
    finally:
        instance_init.fit_logistic, instance_init.fit_misvm = real_logistic, real_misvm
        os.chdir(cwd)
    heads = {s: head_digest(model.branches[s].instance_head) for s in per_scale}
    return {"scales": per_scale, "log": lines, "refit_cap": p.inst_init_refits, "heads_sha256": heads}


def head_digest(head: torch.nn.Module) -> str:
    """sha256 of a linear head's weight and bias bytes (the fit's result, to compare runs exactly)."""
    with torch.no_grad():
        return hashlib.sha256(head.weight.numpy().tobytes() + head.bias.numpy().tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", default="dev768-a")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/recomil-epoch0"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides (JSON values)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the cross-fitting fits run one after another, so each mi-SVM fit's "
                         "regressions are counted as its own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as e:
        ap.error(str(e))
    unit = recipe_epoch0.prepare(args.cohort, args.seed, args.work)
    result = profile(unit, overrides)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    record = {"cohort": args.cohort, "seed": args.seed, "overrides": overrides, "threads": torch.get_num_threads(),
              "commit": commit, **result}
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records + [record], indent=1) + "\n")
    for scale, r in result["scales"].items():
        capped = sum(n >= result["refit_cap"] for n in r["rounds"])
        print(f"| {args.cohort} seed {args.seed} {overrides or ''} | {scale} | {r['seconds']} s "
              f"| {r['regression_s']} s "
              f"| {r['outside_regressions_s']} s | {r['misvm_fits']} | {r['rounds']} ({capped} at the cap) "
              f"| {r['regressions']} | {r['rows_median']} | {r['iters_mean']} (max {r['iters_max']}) |")


if __name__ == "__main__":
    main()
