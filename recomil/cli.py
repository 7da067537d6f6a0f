"""The ``recomil`` command and the shared runner of the stage scripts.

``recomil stage NAME [SCALE]`` runs one pipeline stage (what ``dvc repro`` calls through
``stages/*.py``); bad input ends with one line ``error: ...`` and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from recomil.config import ConfigError, Params, load_params
from recomil.data.errors import DataError

_EXPECTED = (ConfigError, DataError, ValueError, FileNotFoundError)


def _stage_function(name: str) -> Callable[..., Any]:
    if name in ("check_params", "scan"):  # light: no torch
        from recomil.pipeline import checks

        return {"check_params": checks.run_check_params, "scan": checks.run_scan}[name]
    from recomil.pipeline import data_stages, evaluate_stage, prototypes_stage, train_stage

    table = {"demo": data_stages.run_demo, "ingest": data_stages.run_ingest, "split": data_stages.run_split,
             "prototypes": prototypes_stage.run_prototypes, "train": train_stage.run_train,
             "evaluate": evaluate_stage.run_evaluate}
    return table[name]


def run_stage(name: str, *args: str, params_path: str = "params.yaml") -> int:
    """Run stage ``name`` with the project's params; returns the process exit code."""
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        p: Params = load_params(params_path)
        result = _stage_function(name)(p, *args)
    except _EXPECTED as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"stage": name, "result": result}, default=str)[:2000])
    return 0


def stage_main(name: str) -> None:
    """Entry point of ``stages/<name>.py``: extra command-line words go to the stage."""
    sys.exit(run_stage(name, *sys.argv[1:]))


def main(argv: list[str] | None = None) -> int:
    """``recomil`` console command."""
    parser = argparse.ArgumentParser(prog="recomil", description="ReCo-MIL whole-slide-image classification")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage", help="run one pipeline stage (as dvc repro does)")
    st.add_argument("name", choices=["check_params", "scan", "demo", "ingest", "split", "prototypes", "train",
                                     "evaluate"])
    st.add_argument("args", nargs="*", help="stage arguments (the scale for prototypes)")
    st.add_argument("--params", default="params.yaml")
    pr = sub.add_parser("predict", help="score new, unlabelled slides with a trained model")
    pr.add_argument("--model", required=True, help="trained model directory (models/) or a best.pt file")
    pr.add_argument("--features", required=True, nargs="+", help="feature folders or files (high scale)")
    pr.add_argument("--features-low", nargs="+", default=None,
                    help="low-scale folders or files (default: look in --features for *_low_* files)")
    pr.add_argument("--out", required=True, help="output CSV of per-slide probabilities")
    pr.add_argument("--topk", type=int, default=0, help="also write each slide's N most attended patches")
    pr.add_argument("--slides-dir", default=None,
                    help="whole-slide images found by slide id: draw each slide's attention over it")
    pr.add_argument("--heatmaps-out", default=None, help="where the overlays go (default: <out>_slides/)")
    hm = sub.add_parser("heatmap", help="draw a new slide's attention over its whole-slide image")
    hm.add_argument("--model", required=True, help="trained model directory (models/) or a best.pt file")
    hm.add_argument("--features", required=True, nargs="+", help="the slide's feature file (high scale)")
    hm.add_argument("--features-low", nargs="+", default=None, help="its low-scale feature file")
    hm.add_argument("--slide", required=True, help="the whole-slide image (.svs, .tif, .ndpi, .mrxs, ...)")
    hm.add_argument("--out", required=True, help="output folder")
    hm.add_argument("--topk", type=int, default=12, help="patches in the gallery")
    for sp in (pr, hm):
        sp.add_argument("--patch-size-level0", type=float, default=0.0,
                        help="level-0 side of a high-scale patch, for feature files that do not say")
        sp.add_argument("--patch-size-level0-low", type=float, default=0.0, help="the same for the low scale")
    args = parser.parse_args(argv)
    if args.command == "stage":
        return run_stage(args.name, *args.args, params_path=args.params)
    if args.command == "heatmap":
        return _heatmap(args)
    return _predict(args)


def _patch_sizes(args: argparse.Namespace) -> dict[str, float]:
    return {"high": args.patch_size_level0, "low": args.patch_size_level0_low}


def _heatmap(args: argparse.Namespace) -> int:
    from recomil.evaluation.new_slides import heatmap

    try:
        paths = heatmap(args.model, args.features, args.features_low, args.slide, args.out, _patch_sizes(args),
                        args.topk)
    except _EXPECTED as exc:
        print(f"error: heatmap: {exc}", file=sys.stderr)
        return 1
    if not paths:
        print("error: heatmap: nothing drawn (see the warning above)", file=sys.stderr)
        return 1
    for path in paths:
        print(f"heatmap: {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recomil.evaluation.new_slides import predict_slides

    try:
        out = Path(args.out)
        probs, top = predict_slides(args.model, args.features, args.features_low, args.topk,
                                    slides_dir=args.slides_dir,
                                    heatmaps_out=args.heatmaps_out or out.with_name(out.stem + "_slides"),
                                    patch_size=_patch_sizes(args))
    except _EXPECTED as exc:
        print(f"error: predict: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    probs.to_csv(out, index=False)
    print(f"predict: {len(probs)} slide(s) -> {out}")
    if top is not None:
        top_path = out.with_name(out.stem + "_topk.csv")
        top.to_csv(top_path, index=False)
        print(f"predict: top-{args.topk} attended patches -> {top_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
