"""Stages ``ingest`` (with the built-in demo cohort generated inside it) and ``split``; ``run_demo``
writes the demo cohort's files (``recomil stage demo``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from recomil.config import Params
from recomil.data.demo import make_demo
from recomil.data.errors import writing
from recomil.data.ingest import ingest
from recomil.data.store import read_manifest
from recomil.pipeline import paths
from recomil.split import make_splits


def run_demo(p: Params, out: Path = paths.DEMO) -> dict[str, int]:
    """Write the demo cohort."""
    return make_demo(p, out)


def run_ingest(p: Params, out: Path = paths.STORE, progress: bool = True,
               manifest: Path = paths.MANIFEST) -> dict[str, Any]:
    """Build the feature store from the configured dataset, and a copy of its manifest at
    ``manifest`` (the split stage's input: a file of its own, so that DVC never needs the store's
    directory listing to hash the split stage's dependency).

    The built-in demo cohort is generated here, in a folder of fixed name (``data/.demo-cohort``,
    removed afterwards; deterministic given the ``demo_*`` keys, so the store's manifest and hash
    are the same on every machine), and its per-patch ground truth kept in the store: so a user
    cohort's pipeline has no demo stage and nothing in it writes or reads demo files.
    ``recomil stage demo`` writes the demo's files to ``data/demo`` for anyone who wants to look at
    the original's format.
    """
    if p.dataset != "demo":
        summary = ingest(p, out, progress=progress)
    else:
        build = out.parent / paths.DEMO_BUILD.name
        shutil.rmtree(build, ignore_errors=True)  # left by an interrupted run
        try:
            make_demo(p, build)
            summary = ingest(p, out, progress=progress, demo_dir=build)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    with writing(manifest):
        shutil.copyfile(out / "manifest.csv", tmp)
    tmp.replace(manifest)
    return summary


def run_split(p: Params, manifest: Path = paths.MANIFEST, out: Path = paths.SPLIT) -> dict[str, Any]:
    """Write the per-fold train/val/test slide lists from the ingest stage's manifest."""
    table = read_manifest(manifest)
    folds = make_splits(table, p)
    classes = table.drop_duplicates("label_index").sort_values("label_index")["label"].tolist()
    doc = {"folds": folds, "classes": classes}
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    return {"folds": len(folds), **{k: [len(f[k]) for f in folds] for k in ("train", "val", "test")}}


def load_split(path: Path = paths.SPLIT) -> list[dict[str, list[str]]]:
    """The folds written by the split stage."""
    return json.loads(Path(path).read_text())["folds"]
