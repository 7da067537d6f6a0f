"""Read one bag of patch features from any supported file format.

Formats (detected by file ending):

* ``.pkl``: the original's pickled list of dicts, each with ``feature`` (``[D]``) and optionally
  ``coords`` (or ``coord``); also a pickled ``[N, D]`` array or a dict with ``features``.
  Read with a restricted unpickler (:mod:`recomil.data.safe_pickle`).
* ``.npy``: an ``[N, D]`` array (``allow_pickle=False``).
* ``.pt`` / ``.pth``: an ``[N, D]`` tensor, or a dict with ``features``/``feats`` and ``coords``
  (``torch.load(weights_only=True)``).
* ``.h5`` / ``.hdf5``: CLAM / TRIDENT / STAMP files with dataset ``features`` (or ``feats``),
  ``[N, D]`` or ``[1, N, D]``, and optional ``coords`` ``[N, 2]`` whose attributes (TRIDENT's
  ``patch_size_level0``, magnification, ...) are kept.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recomil.data.errors import DataError
from recomil.data.safe_pickle import load_plain_pickle

SUFFIXES = (".pkl", ".npy", ".pt", ".pth", ".h5", ".hdf5")
_FEATURE_KEYS = ("features", "feats", "feature")
_COORD_KEYS = ("coords", "coord", "coordinates")


@dataclass
class Bag:
    """One slide at one scale: ``features`` ``[N, D]`` float32, ``coords`` ``[N, 2]`` or None."""

    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)


def attr_value(v: Any) -> Any:
    """An HDF5 attribute as plain Python: scalars as numbers, arrays as lists (CLAM writes
    ``downsample = [1.0, 1.0]`` and ``level_dim``), bytes as text."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    a = np.asarray(v)
    if a.dtype.kind in "SO":
        return a.astype(str).tolist() if a.ndim else str(a)
    return a.item() if a.ndim == 0 else a.tolist()


def patch_size_level0(attrs: dict[str, Any]) -> float | None:
    """Side of a patch in level-0 pixels from ``coords`` attributes, or None when they do not say.

    TRIDENT writes ``patch_size_level0``; CLAM writes ``patch_size`` at ``patch_level`` with that
    level's ``downsample`` (``[dx, dy]``), so the level-0 size is ``patch_size * downsample``.
    """
    try:
        if "patch_size_level0" in attrs:
            return float(attrs["patch_size_level0"])
        if "patch_size" in attrs:
            ds = attrs.get("downsample")
            if ds is not None:
                ds = ds[0] if isinstance(ds, (list, tuple)) else ds
                return float(attrs["patch_size"]) * float(ds)
            if int(attrs.get("patch_level", 0)) == 0:
                return float(attrs["patch_size"])
    except (TypeError, ValueError, IndexError):
        return None
    return None


def _as_2d(path: Path, arr: Any) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise DataError(f"{path}: features must be a 2-D [N, D] array, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"{path}: features are complex-valued ({a.dtype}); expected real numbers "
                        f"(dropping the imaginary part would change them)")
    if not np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_:
        raise DataError(f"{path}: features must be numeric, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def _coords(path: Path, arr: Any, n: int) -> np.ndarray | None:
    if arr is None:
        return None
    c = np.asarray(arr)
    if c.ndim == 3 and c.shape[0] == 1:
        c = c[0]
    if c.ndim != 2 or c.shape[0] != n or c.shape[1] < 2:
        raise DataError(f"{path}: coords must be [N, 2] with N = {n} features, got shape {c.shape}")
    return c[:, :2].astype(np.float64)


def _from_mapping(path: Path, d: dict) -> Bag:
    key = next((k for k in _FEATURE_KEYS if k in d), None)
    if key is None:
        raise DataError(f"{path}: no features found (expected one of keys {', '.join(_FEATURE_KEYS)})")
    feats = _as_2d(path, d[key])
    ckey = next((k for k in _COORD_KEYS if k in d), None)
    return Bag(feats, _coords(path, d[ckey] if ckey else None, feats.shape[0]))


def _read_pkl(path: Path) -> Bag:
    obj = load_plain_pickle(path)
    if isinstance(obj, dict):
        return _from_mapping(path, obj)
    if isinstance(obj, np.ndarray):
        return Bag(_as_2d(path, obj), None)
    if not isinstance(obj, (list, tuple)):
        raise DataError(f"{path}: expected a list of dicts with 'feature', got {type(obj).__name__}")
    if len(obj) == 0:
        return Bag(np.zeros((0, 0), np.float32), None)
    feats, coords = [], []
    for i, item in enumerate(obj):
        if not isinstance(item, dict) or "feature" not in item:
            raise DataError(f"{path}: entry {i} is not a dict with key 'feature'")
        feats.append(np.asarray(item["feature"]).reshape(-1))
        ckey = next((k for k in _COORD_KEYS if k in item), None)
        coords.append(None if ckey is None else np.asarray(item[ckey]).reshape(-1)[:2])
    widths = {f.shape[0] for f in feats}
    if len(widths) > 1:
        raise DataError(f"{path}: entries have different feature widths {sorted(widths)}")
    arr = _as_2d(path, np.stack(feats))
    has = [c is not None for c in coords]
    return Bag(arr, _coords(path, np.stack(coords), arr.shape[0]) if all(has) else None)


def _read_npy(path: Path) -> Bag:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's words would advise allow_pickle=True, the unsafe path this reader avoids
        raise DataError(f"{path}: not a plain numeric .npy array (no .npy header, or pickled objects, "
                        f"which recomil never loads)") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: truncated or corrupt .npy ({exc})") from None
    return Bag(_as_2d(path, arr), None)


def torch_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in words that never advise the unsafe
    path (torch's own message suggests ``weights_only=False``)."""
    text = str(exc)
    if "weights only load failed" in text.lower() or "weights_only" in text:
        return "it holds Python objects other than tensors and plain containers, which recomil never unpickles"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _read_pt(path: Path) -> Bag:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: unreadable, corrupt or unsafe .pt file ({torch_load_reason(exc)})") from None
    if isinstance(obj, torch.Tensor):
        return Bag(_as_2d(path, obj.float().numpy()), None)
    if isinstance(obj, dict):
        d = {k: (v.float().numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
        return _from_mapping(path, d)
    raise DataError(f"{path}: expected a tensor or a dict of tensors, got {type(obj).__name__}")


def _read_h5(path: Path) -> Bag:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            key = next((k for k in ("features", "feats") if k in f), None)
            if key is None:
                raise DataError(f"{path}: no 'features' (or 'feats') dataset; found {sorted(f.keys())}")
            for name in (key, "coords"):
                if name in f and not isinstance(f[name], h5py.Dataset):
                    raise DataError(f"{path}: '{name}' is a {type(f[name]).__name__} (a folder inside the file), "
                                    f"not an array")
            feats = _as_2d(path, f[key][()])
            coords, attrs = None, {}
            if "coords" in f:
                coords = _coords(path, f["coords"][()], feats.shape[0])
                attrs = {k: attr_value(v) for k, v in f["coords"].attrs.items()}
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: truncated or corrupt .h5 file ({exc})") from None
    return Bag(feats, coords, attrs)


_READERS = {".pkl": _read_pkl, ".npy": _read_npy, ".pt": _read_pt, ".pth": _read_pt, ".h5": _read_h5,
            ".hdf5": _read_h5}


def read_bag(path: str | Path) -> Bag:
    """Read one bag from ``path`` (format by ending; see the module docstring).

    Raises:
        DataError: unsupported ending, unreadable, unsafe or malformed file.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported feature file type (expected one of {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    return reader(path)
