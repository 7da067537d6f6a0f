"""The ``recomil`` command and the shared runner of the stage scripts.

``recomil stage NAME [SCALE]`` runs one pipeline stage (what ``dvc repro`` calls through
``stages/*.py``); bad input ends with one line ``error: ...`` and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recomil.config import ConfigError, Params, load_params
from recomil.data.errors import DataError, is_out_of_space, writing

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
    except (*_EXPECTED, OSError) as exc:
        return _fail(name, exc)
    print(json.dumps({"stage": name, "result": result}, default=str)[:2000])
    return 0


def _fail(name: str, exc: BaseException) -> int:
    """The one error line of command ``name`` (exit code 1) for bad input or a full disk (named by its
    writer, else ``exc.filename`` when the OS gave one); any other OS error is raised again."""
    if is_out_of_space(exc):
        where = exc.filename or f"a file under {os.getcwd()}"
        print(f"error: {name}: {where}: no space left on the device (errno {exc.errno}); free some space, then "
              f"run again", file=sys.stderr)
        return 1
    if not isinstance(exc, _EXPECTED):
        raise exc
    print(f"error: {name}: {exc}", file=sys.stderr)
    return 1


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

    out = Path(args.out)
    created = not out.exists()
    paths: list[Path] = []
    try:
        check_output_dir(out, "--out")
        paths = heatmap(args.model, args.features, args.features_low, args.slide, out, _patch_sizes(args),
                        args.topk)
        if not paths:
            raise DataError("nothing drawn (see the warning above)")
    except (*_EXPECTED, OSError) as exc:
        if created:  # a failed heatmap leaves no folder behind
            shutil.rmtree(out, ignore_errors=True)
        return _fail("heatmap", exc)
    for path in paths:
        print(f"heatmap: {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from recomil.evaluation.new_slides import predict_slides

    out = Path(args.out)
    top_path = out.with_name(out.stem + "_topk.csv")
    heatmaps_out = Path(args.heatmaps_out) if args.heatmaps_out else out.with_name(out.stem + "_slides")
    written: list[Path] = []
    try:
        check_output_file(out, "--out")  # before any slide is scored
        if args.topk:
            check_output_file(top_path, "the top-patches table (from --out)")
        if args.slides_dir:
            check_output_dir(heatmaps_out, "--heatmaps-out")
        probs, top = predict_slides(args.model, args.features, args.features_low, args.topk,
                                    slides_dir=args.slides_dir, heatmaps_out=heatmaps_out,
                                    patch_size=_patch_sizes(args))
        write_csv(probs, out)
        written.append(out)
        if top is not None:
            write_csv(top, top_path)
            written.append(top_path)
    except (*_EXPECTED, OSError) as exc:
        for path in written:  # all or nothing: no table without its companion
            path.unlink(missing_ok=True)
        return _fail("predict", exc)
    print(f"predict: {len(probs)} slide(s) -> {out}")
    if top is not None:
        print(f"predict: top-{args.topk} attended patches -> {top_path}")
    return 0


def check_output_file(path: Path, what: str) -> None:
    """Refuse, before any work, an output file path that cannot be written: a folder, or a parent
    that is a file."""
    if path.is_dir():
        raise DataError(f"{path}: {what} names an existing folder; give the path of a file to write")
    parent = next((q for q in [path.parent, *path.parent.parents] if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(f"{path}: {what} lies under {parent}, which is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK):
        raise DataError(f"{path}: {what}: the folder {parent} is not writable")


def check_output_dir(path: Path, what: str) -> None:
    """Refuse, before any work, an output folder path that names an existing file."""
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: {what} names an existing file; give a folder")
    check_output_file(path / "x", what)


def write_csv(df: Any, path: Path) -> None:
    """Write a table atomically (a temporary sibling renamed into place): never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
