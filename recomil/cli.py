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
    st.add_argument("name", choices=["demo", "ingest", "split", "prototypes", "train", "evaluate"])
    st.add_argument("args", nargs="*", help="stage arguments (the scale for prototypes)")
    st.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    if args.command == "stage":
        return run_stage(args.name, *args.args, params_path=args.params)
    return 2


if __name__ == "__main__":
    sys.exit(main())
