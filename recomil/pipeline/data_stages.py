"""Stages ``ingest`` (with the built-in demo cohort generated inside it) and ``split``; ``run_demo``
writes the demo cohort's files (``recomil stage demo``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from recomil.config import Params
from recomil.data.demo import make_demo
from recomil.data.ingest import ingest
from recomil.data.store import FeatureStore
from recomil.pipeline import paths
from recomil.split import make_splits


def run_demo(p: Params, out: Path = paths.DEMO) -> dict[str, int]:
    """Write the demo cohort."""
    return make_demo(p, out)


def run_ingest(p: Params, out: Path = paths.STORE, progress: bool = True) -> dict[str, Any]:
    """Build the feature store from the configured dataset.

    The built-in demo cohort is generated here, in a temporary folder (deterministic given the
    ``demo_*`` keys), and its per-patch ground truth kept in the store: so a user cohort's
    pipeline has no demo stage and nothing in it writes or reads demo files. ``recomil stage demo``
    writes the demo's files to ``data/demo`` for anyone who wants to look at the original's format.
    """
    if p.dataset != "demo":
        return ingest(p, out, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".demo-", dir=out.parent) as tmp:
        make_demo(p, Path(tmp) / "demo")
        return ingest(p, out, progress=progress, demo_dir=Path(tmp) / "demo")


def run_split(p: Params, store_dir: Path = paths.STORE, out: Path = paths.SPLIT) -> dict[str, Any]:
    """Write the per-fold train/val/test slide lists."""
    store = FeatureStore(store_dir)
    folds = make_splits(store.manifest, p)
    doc = {"folds": folds, "classes": store.classes}
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    return {"folds": len(folds), **{k: [len(f[k]) for f in folds] for k in ("train", "val", "test")}}


def load_split(path: Path = paths.SPLIT) -> list[dict[str, list[str]]]:
    """The folds written by the split stage."""
    return json.loads(Path(path).read_text())["folds"]
