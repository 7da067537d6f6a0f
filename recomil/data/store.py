"""The feature store: every bag of a cohort in contiguous, memory-mapped arrays.

Layout of a store directory::

    meta.json                 classes, scales, feature widths, dtype, coordinate attributes
    manifest.csv              slide_id, label, label_index, split, patient_id, n_<scale>,
                              file_<scale>, has_coords
    <scale>.features.bin      [total_N, D] raw array in ``store_dtype``
    <scale>.coords.bin        [total_N, 2] float32 (NaN where a slide has no coordinates)
    <scale>.offsets.npy       [S + 1] int64; bag i is rows offsets[i]:offsets[i+1]

It is written into a temporary sibling directory and renamed into place at the end, so a failed
ingest leaves the previous store untouched and no partial one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recomil.data.errors import DataError, writing
from recomil.data.readers import patch_size_level0


class StoreWriter:
    """Stream bags into a new store at ``path`` (atomically, on :meth:`commit`)."""

    def __init__(self, path: str | Path, scales: tuple[str, ...], dtype: str, classes: list[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # left by a killed ingest
            shutil.rmtree(stale, ignore_errors=True)
            print(f"ingest: removed {stale}, left behind by an interrupted run", file=sys.stderr)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self.scales, self.dtype, self.classes = scales, np.dtype(dtype), classes
        self._feat = {s: open(self.tmp / f"{s}.features.bin", "wb") for s in scales}
        self._coord = {s: open(self.tmp / f"{s}.coords.bin", "wb") for s in scales}
        self._offsets: dict[str, list[int]] = {s: [0] for s in scales}
        self.dims: dict[str, int | None] = {s: None for s in scales}
        self.coord_attrs: dict[str, dict[str, Any]] = {s: {} for s in scales}
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any], bags: dict[str, Any]) -> None:
        """Append one slide: ``row`` manifest fields, ``bags`` scale -> :class:`Bag` (validated)."""
        has_coords = True
        for s in self.scales:
            bag = bags[s]
            n, d = bag.features.shape
            with np.errstate(over="ignore"):  # checked just below, with the slide named
                stored = np.ascontiguousarray(bag.features, dtype=self.dtype)
            if not np.isfinite(stored).all():  # finite input that the store dtype cannot hold
                j = int(np.argmax(~np.isfinite(stored).all(1)))
                v = bag.features[j][~np.isfinite(stored[j])][0]
                raise DataError(f"slide {row['slide_id']!r}: feature value {float(v):.6g} (patch {j}, {s} scale) is "
                                f"beyond the range of store_dtype {self.dtype.name} (largest "
                                f"{float(np.finfo(self.dtype).max):.6g}); set store_dtype: float32")
            coords = bag.coords if bag.coords is not None else np.full((n, 2), np.nan)
            has_coords &= bag.coords is not None
            with writing(self.path):
                self._feat[s].write(stored.tobytes())
                self._coord[s].write(np.ascontiguousarray(coords, dtype=np.float32).tobytes())
            self._offsets[s].append(self._offsets[s][-1] + n)
            self.dims[s] = d
            if bag.attrs and not self.coord_attrs[s]:
                self.coord_attrs[s] = {k: v for k, v in bag.attrs.items() if isinstance(v, (int, float, str))}
            size = patch_size_level0(bag.attrs)
            row[f"n_{s}"] = n
            row[f"patch_size_{s}"] = np.nan if size is None else size
        row["has_coords"] = has_coords
        self.rows.append(row)

    def commit(self, extra: dict[str, Path] | None = None) -> None:
        """Finish the files and move the store into place; ``extra`` folders (name -> source, e.g.
        the demo's per-patch ground truth) are copied into it first. On any error the partial store
        is removed (:meth:`abort`) and a full disk is named (:func:`recomil.data.errors.writing`)."""
        try:
            with writing(self.path):
                self._finish(extra)
        except BaseException:
            self.abort()
            raise
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _finish(self, extra: dict[str, Path] | None) -> None:
        for name, src in (extra or {}).items():
            shutil.copytree(src, self.tmp / name)
        for f in [*self._feat.values(), *self._coord.values()]:
            f.close()
        for s in self.scales:
            np.save(self.tmp / f"{s}.offsets.npy", np.asarray(self._offsets[s], dtype=np.int64))
        meta = {"classes": self.classes, "scales": list(self.scales), "dtype": self.dtype.name,
                "dims": self.dims, "num_slides": len(self.rows), "coord_attrs": self.coord_attrs,
                "num_instances": {s: self._offsets[s][-1] for s in self.scales}}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        pd.DataFrame(self.rows).to_csv(self.tmp / "manifest.csv", index=False)

    def abort(self) -> None:
        """Drop everything written so far. Closing a file whose buffer cannot be flushed (a full disk)
        raises again: that is ignored here, so the clean-up always runs."""
        for f in [*self._feat.values(), *self._coord.values()]:
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A store's ``manifest.csv``, ids and labels as written (``0001`` and ``NA`` stay text)."""
    return pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "split": str, "label": str},
                       keep_default_na=False)


class FeatureStore:
    """Read-only, memory-mapped view of a store directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.path}: not a feature store (no meta.json); run the ingest stage first")
        self.meta = json.loads(meta_path.read_text())
        self.classes: list[str] = self.meta["classes"]
        self.scales: tuple[str, ...] = tuple(self.meta["scales"])
        self.dims: dict[str, int] = self.meta["dims"]
        self.manifest = read_manifest(self.path / "manifest.csv")
        self._index = {sid: i for i, sid in enumerate(self.manifest["slide_id"])}
        self._offsets = {s: np.load(self.path / f"{s}.offsets.npy") for s in self.scales}
        dtype = np.dtype(self.meta["dtype"])
        self._feats, self._coords = {}, {}
        for s in self.scales:
            total = int(self._offsets[s][-1])
            self._feats[s] = np.memmap(self.path / f"{s}.features.bin", dtype=dtype, mode="r",
                                       shape=(total, self.dims[s])) if total else np.zeros((0, self.dims[s]), dtype)
            self._coords[s] = np.memmap(self.path / f"{s}.coords.bin", dtype=np.float32, mode="r",
                                        shape=(total, 2)) if total else np.zeros((0, 2), np.float32)

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def slide_ids(self) -> list[str]:
        """Slide ids in store order."""
        return list(self.manifest["slide_id"])

    @property
    def labels(self) -> np.ndarray:
        """``[S]`` int64 label indices."""
        return self.manifest["label_index"].to_numpy(dtype=np.int64)

    def position(self, slide_id: str) -> int:
        """Row of ``slide_id`` in the store."""
        try:
            return self._index[slide_id]
        except KeyError:
            raise DataError(f"slide {slide_id!r} is not in the feature store {self.path}") from None

    def features(self, i: int, scale: str) -> np.ndarray:
        """``[N, D]`` memory-mapped features of bag ``i`` at ``scale`` (store dtype)."""
        o = self._offsets[scale]
        return self._feats[scale][o[i]:o[i + 1]]

    def coords(self, i: int, scale: str) -> np.ndarray:
        """``[N, 2]`` float32 coordinates of bag ``i`` (NaN when the slide has none)."""
        o = self._offsets[scale]
        return self._coords[scale][o[i]:o[i + 1]]

    def array(self, scale: str) -> np.ndarray:
        """``[total_N, D]`` memory-mapped features of every bag at ``scale`` (store order)."""
        return self._feats[scale]

    def offsets(self, scale: str) -> np.ndarray:
        """``[S + 1]`` int64 row offsets: bag i is ``array(scale)[offsets[i]:offsets[i + 1]]``."""
        return self._offsets[scale]

    def patch_size(self, i: int, scale: str) -> float | None:
        """Side of bag ``i``'s patches at ``scale`` in level-0 pixels, or None when unknown."""
        col = f"patch_size_{scale}"
        if col not in self.manifest.columns:
            return None
        v = pd.to_numeric(self.manifest[col].iloc[i], errors="coerce")
        return None if pd.isna(v) or v <= 0 else float(v)

    def sizes(self, scale: str) -> np.ndarray:
        """``[S]`` bag sizes at ``scale``."""
        return np.diff(self._offsets[scale])
