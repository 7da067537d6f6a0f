"""The two light stages that run before everything else, without importing torch.

``check_params`` validates every key of ``params.yaml`` (the stage runner reads it) and writes a
marker whose content never changes; ``scan`` fingerprints the input files outside the project
(:mod:`recomil.data.fingerprint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recomil.config import Params
from recomil.data.fingerprint import write_fingerprint
from recomil.pipeline import paths


def run_check_params(p: Params, out: Path = paths.PARAMS_OK) -> dict[str, Any]:
    """Stage ``check_params``: by now ``params.yaml`` has been read and validated; write a marker
    whose content never changes, so that the stages after it re-run only when the params they
    read change, while a mistyped or invalid key fails ``dvc repro`` here."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("params.yaml: every key known and valid\n")
    return {"dataset": p.dataset}


def run_scan(p: Params, out: Path = paths.INPUTS) -> dict[str, Any]:
    """Stage ``scan``: fingerprint the dataset's input files outside the project, so that
    ``ingest`` re-runs when they change."""
    return write_fingerprint(p, out)
