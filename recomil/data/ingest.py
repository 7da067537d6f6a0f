"""Ingest: read a cohort's feature files, validate them strictly, write the feature store."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recomil.config import Params
from recomil.data.errors import DataError
from recomil.data.presets import Cohort, load_cohort
from recomil.data.readers import Bag, patch_size_level0, read_bag
from recomil.data.store import StoreWriter


def _check_bag(bag: Bag, where: str, on_nonfinite: str) -> tuple[Bag, int]:
    """Refuse empty bags; refuse or drop rows with NaN/Inf. Returns the bag and rows dropped."""
    if bag.features.shape[0] == 0:
        raise DataError(f"{where}: empty bag (no patches)")
    finite = np.isfinite(bag.features).all(axis=1)
    bad = int((~finite).sum())
    if bad:
        if on_nonfinite != "drop":
            raise DataError(f"{where}: {bad} patch(es) with NaN or Inf features "
                            "(set on_nonfinite: drop to drop them)")
        coords = None if bag.coords is None else bag.coords[finite]
        bag = Bag(bag.features[finite], coords, bag.attrs)
        if bag.features.shape[0] == 0:
            raise DataError(f"{where}: every patch has NaN or Inf features")
    return bag, bad


def ingest(p: Params, out_dir: str | Path, *, progress: bool = True, demo_dir: Path | None = None) -> dict[str, object]:
    """Build the feature store for the dataset that ``p`` describes.

    Returns:
        A summary: slides, instances per scale, feature widths, rows dropped, classes.

    Raises:
        DataError: on any bad input (the message names the slide or file); nothing is written.
    """
    cohort: Cohort = load_cohort(p, demo_dir) if demo_dir is not None else load_cohort(p)
    class_index = {c: i for i, c in enumerate(cohort.classes)}
    writer = StoreWriter(out_dir, cohort.scales, p.store_dtype, cohort.classes)
    dropped = 0
    try:
        dims: dict[str, int] = {}
        first_file: dict[str, Path] = {}
        for s in tqdm(cohort.slides, desc="ingest", unit="slide", disable=None if progress else True, file=sys.stderr):
            bags = {}
            for scale in cohort.scales:
                path = s.files[scale]
                bag, bad = _check_bag(read_bag(path), f"slide {s.slide_id!r} ({path})", p.on_nonfinite)
                dropped += bad
                d = bag.features.shape[1]
                expected = getattr(p, f"feat_dim_{scale}")
                if expected is not None and d != expected:
                    raise DataError(f"slide {s.slide_id!r} ({path}): feature width {d}, "
                                    f"but feat_dim_{scale} is {expected}")
                if scale in dims and d != dims[scale]:
                    raise DataError(f"slide {s.slide_id!r} ({path}): feature width {d} differs from "
                                    f"{dims[scale]} of {first_file[scale]} at the {scale} scale")
                dims.setdefault(scale, d)
                first_file.setdefault(scale, path)
                given = p.patch_size_level0 if scale == "high" else p.patch_size_level0_low
                if given > 0 and patch_size_level0(bag.attrs) is None:
                    bag.attrs = {**bag.attrs, "patch_size_level0": given}
                bags[scale] = bag
            if s.label not in class_index:
                raise DataError(f"slide {s.slide_id!r}: unknown label value {s.label!r}")
            row = {"slide_id": s.slide_id, "label": s.label, "label_index": class_index[s.label],
                   "split": s.split, "patient_id": s.patient_id or s.slide_id}
            row.update({f"file_{sc}": str(s.files[sc]) for sc in cohort.scales})
            writer.add(row, bags)
    except BaseException:
        writer.abort()
        raise
    truth = demo_dir / "ground_truth" if demo_dir is not None and p.dataset == "demo" else None
    writer.commit(extra={"ground_truth": truth} if truth is not None and truth.is_dir() else None)
    if dropped:
        print(f"ingest: dropped {dropped} patch(es) with NaN or Inf features", file=sys.stderr)
    return {"slides": len(cohort.slides), "classes": cohort.classes, "scales": list(cohort.scales),
            "dims": dims, "dropped_nonfinite": dropped,
            "instances": {sc: int(sum(r[f"n_{sc}"] for r in writer.rows)) for sc in cohort.scales}}
