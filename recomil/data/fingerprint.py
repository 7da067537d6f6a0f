"""A cheap fingerprint of a cohort's input files outside the project (the ``scan`` stage).

DVC tracks the feature folders of a user cohort through the params that name them, not through
their content, so adding slides to a folder or editing ``labels.csv`` in place would leave
``dvc status`` clean and ``ingest`` would keep the old store. The ``scan`` stage runs on every
``dvc repro`` (``always_changed``) and writes the paths, sizes and modification times of every
file the dataset can read, hashed; ``ingest`` depends on that file, so it re-runs exactly when
an input changed. Hashing metadata, not content, keeps it cheap (benchmarks/scan.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from recomil.config import DATASET_KEYS, Params
from recomil.data.discovery import walk_files


def input_paths(p: Params) -> list[Path]:
    """The files and folders the dataset's keys name (none for the built-in demo, which DVC tracks)."""
    return [Path(getattr(p, k)).expanduser() for k in DATASET_KEYS[p.dataset] if getattr(p, k)]


def fingerprint_inputs(p: Params) -> dict[str, Any]:
    """``{"dataset", "files", "bytes", "sha256"}`` over (path, size, mtime) of every input file."""
    h = hashlib.sha256()
    files = total = 0
    for root in input_paths(p):
        entries = walk_files(root) if root.is_dir() else [root] if root.exists() else []
        h.update(f"{root}\0{len(entries)}\n".encode())
        for f in entries:
            try:
                st = f.stat()
            except OSError:  # a dangling link: its absence is part of the fingerprint
                h.update(f"{f}\0missing\n".encode())
                continue
            h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            files += 1
            total += st.st_size
    return {"dataset": p.dataset, "files": files, "bytes": total, "sha256": h.hexdigest()}


def write_fingerprint(p: Params, out: Path) -> dict[str, Any]:
    """Write the fingerprint as JSON (rewritten only when it changed)."""
    fp = fingerprint_inputs(p)
    text = json.dumps(fp, indent=1) + "\n"
    if not out.is_file() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return fp
