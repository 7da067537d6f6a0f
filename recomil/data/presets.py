"""Dataset presets (the ``dataset`` param): which slides exist, their labels, splits and files.

Each preset returns a :class:`Cohort`: a list of :class:`SlideEntry` (slide id, label name, own
split if the layout defines one, patient id, one file per scale) and the ordered class names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recomil.config import Params
from recomil.data.discovery import FileIndex, slide_key
from recomil.data.errors import DataError
from recomil.data.readers import SUFFIXES

DEMO_DIR = Path("data/demo")
_POSITIVE = {"1", "tumor", "tumour", "positive", "pos"}
_NEGATIVE = {"0", "normal", "negative", "neg"}
_TCGA = {"tcga-luad": "LUAD", "luad": "LUAD", "0": "LUAD", "tcga-lusc": "LUSC", "lusc": "LUSC", "1": "LUSC"}


@dataclass
class SlideEntry:
    """One slide: ``files`` maps scale name to its feature file."""

    slide_id: str
    label: str
    split: str = ""
    patient_id: str = ""
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class Cohort:
    """The slides of a dataset and its ordered class names (label index = position)."""

    slides: list[SlideEntry]
    classes: list[str]
    scales: tuple[str, ...]


def _column_name(header: str) -> str:
    """A header as the presets name columns: case, surrounding blanks, inner spaces and hyphens
    do not matter (``Patient_ID``, ``patient id`` and ``PATIENT-ID`` are ``patient_id``; so is
    ``PatientID``, matched letter for letter by :func:`_read_csv`)."""
    return re.sub(r"[\s\-]+", "_", str(header).strip().lstrip("\ufeff").strip()).lower()


def _read_csv(path: str | Path, needed: list[str], what: str, optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """A label file as text (ids kept exactly as written), its known columns renamed to their
    canonical names whatever their spelling. A column that looks like a known one but is not
    (``patient``, ``slideid``) is refused, naming it; other columns are reported as ignored."""
    path = Path(path).expanduser()
    if not str(path) or not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    known = [*needed, *optional]
    by_letters = {k.replace("_", ""): k for k in known}
    names = [_column_name(c) for c in df.columns]
    names = [by_letters.get(n.replace("_", ""), n) for n in names]  # PatientID, SlideID
    for i, name in enumerate(names):
        if name in names[:i]:
            first = df.columns[names.index(name)]
            raise DataError(f"{path}: columns {first!r} and {df.columns[i]!r} both name {name!r}; keep one")
    ignored = []
    for header, name in zip(df.columns, names):
        if name in known or not known:
            continue
        squashed = name.replace("_", "")
        close = [k for k in known if squashed and (k.replace("_", "").startswith(squashed)
                                                   or squashed.startswith(k.replace("_", "")))]
        close = close or difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if close:
            raise DataError(f"{path}: column {header!r} is not one {what} reads; did you mean {close[0]!r}? "
                            f"(columns read: {', '.join(known)})")
        ignored.append(str(header))
    if ignored:
        print(f"note: {path}: column(s) {', '.join(repr(c) for c in ignored)} not read ({what} reads "
              f"{', '.join(known)})", file=sys.stderr)
    df.columns = names
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, names))})")
    return df


def _slide_id(value: str, path: str | Path, row: int) -> str:
    """A slide id from row ``row`` (0-based data row) of a label file: stripped, never empty."""
    sid = str(value).strip()
    if not sid:
        raise DataError(f"{path}, line {row + 2}: empty slide id")
    return sid


def _binary_label(value: str, where: str) -> str:
    v = str(value).strip().lower()
    if v in _POSITIVE:
        return "tumor"
    if v in _NEGATIVE:
        return "normal"
    raise DataError(f"{where}: unknown label value {value!r} (expected one of "
                    f"{', '.join(sorted(_POSITIVE | _NEGATIVE))})")


#: the Camelyon16 layout: the folders and file names the original reads, and nothing else
C16_SUBDIRS = ("train/tumor", "train/normal", "test")
C16_NAMES = r".+_(high|low)_feature_ctrans\.pkl"


def _attach_files(slides: list[SlideEntry], roots: dict[str, str], subdirs: tuple[str, ...] = ("",),
                  names: str | None = None) -> None:
    """Find each slide's file per scale; a listed slide without a file is an error."""
    for scale, root in roots.items():
        index = FileIndex(root, subdirs, names)
        for s in slides:
            path = index.find(s.slide_id, scale)
            if path is None:
                other = [sc for sc in roots if sc != scale and sc in s.files]
                extra = f" (it has a {other[0]}-scale file: in dual mode every slide needs both)" if other else ""
                raise DataError(f"slide {s.slide_id!r}: no {scale}-scale feature file under {index.root}{extra}")
            s.files[scale] = path


def _scale_roots(p: Params) -> dict[str, str]:
    if not p.root_dir_high:
        raise DataError(f"dataset {p.dataset!r} needs param 'root_dir_high'")
    roots = {"high": p.root_dir_high}
    if p.root_dir_low:
        roots["low"] = p.root_dir_low
    return roots


def _c16_train_label(path: Path, slide_id: str) -> str:
    parts = [x.lower() for x in path.parts]
    if "tumor" in parts:
        return "tumor"
    if "normal" in parts:
        return "normal"
    token = slide_id.lower().split("_")[0]
    if token in ("tumor", "normal"):
        return token
    raise DataError(f"slide {slide_id!r}: cannot tell its label: it is not under train/tumor or train/normal "
                    f"and its name does not start with 'tumor_' or 'normal_'")


def _c16(p: Params, root_high: str, root_low: str) -> Cohort:
    roots = {"high": root_high}
    if root_low:
        roots["low"] = root_low
    index = FileIndex(root_high, C16_SUBDIRS, C16_NAMES)
    if p.train_list:
        path = Path(p.train_list).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: train_list not found")
        train_ids = [_strip_name(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        train_ids = [sid for sid in index.slide_ids("high")
                     if "test" not in [x.lower() for x in index.find(sid, "high").relative_to(index.root).parts]]
    slides = []
    for sid in train_ids:
        f = index.find(sid, "high")
        if f is None:
            raise DataError(f"slide {sid!r} (train_list): no high-scale feature file under {index.root}")
        slides.append(SlideEntry(sid, _c16_train_label(f, sid), "train"))
    if not p.test_csv:
        raise DataError("dataset 'c16' needs param 'test_csv' (columns slide,label)")
    df = _read_csv(p.test_csv, [], "test_csv", ("slide", "slide_id", "label"))
    id_col = "slide" if "slide" in df.columns else "slide_id" if "slide_id" in df.columns else None
    if id_col is None or "label" not in df.columns:
        raise DataError(f"{p.test_csv}: test_csv needs columns slide,label (has {', '.join(df.columns)})")
    for i, (value, label) in enumerate(zip(df[id_col], df["label"])):
        sid = _strip_name(_slide_id(value, p.test_csv, i))
        slides.append(SlideEntry(sid, _binary_label(label, f"{p.test_csv}, slide {sid!r}"), "test"))
    _attach_files(slides, roots, C16_SUBDIRS, C16_NAMES)
    return Cohort(slides, ["normal", "tumor"], tuple(roots))


def _strip_name(name: str) -> str:
    """A slide id from a listed name: a bare id as written (dots included: ``TCGA-...-DX1.00AB12CD``),
    or a feature file's name in any supported naming (``{id}_high_feature_ctrans.pkl``, ``{id}.h5``)."""
    name = name.strip()
    path = Path(name)
    if path.suffix.lower() in SUFFIXES:
        return slide_key(path)[0]
    return slide_key(Path(name + ".x"))[0]


def _c17(p: Params) -> Cohort:
    roots = _scale_roots(p)
    ids_path, labels_path = Path(p.ids_file).expanduser(), Path(p.labels_npy).expanduser()
    if not p.ids_file or not ids_path.is_file():
        raise DataError(f"{ids_path}: ids_file not found (dataset 'c17' needs it)")
    if not p.labels_npy or not labels_path.is_file():
        raise DataError(f"{labels_path}: labels_npy not found (dataset 'c17' needs it)")
    ids = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
    try:
        labels = np.load(labels_path, allow_pickle=False).reshape(-1)
    except (ValueError, OSError) as exc:
        raise DataError(f"{labels_path}: not a plain .npy label array ({exc})") from None
    if len(labels) != len(ids):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(ids)} slide ids in {ids_path}")
    slides = [SlideEntry(sid, _binary_label(str(int(lab)) if np.issubdtype(labels.dtype, np.number) else lab,
                                            f"{labels_path}, slide {sid!r}"))
              for sid, lab in zip(ids, labels)]
    _attach_files(slides, roots)
    return Cohort(slides, ["normal", "tumor"], tuple(roots))


def _tcga(p: Params) -> Cohort:
    if not p.train_csv:
        raise DataError("dataset 'tcga' needs param 'train_csv' (columns slide_id,label)")
    df = _read_csv(p.train_csv, ["slide_id", "label"], "train_csv", ("split", "patient_id"))
    dirs = {"LUAD": p.luad_dir, "LUSC": p.lusc_dir}
    for name, d in dirs.items():
        if not d:
            raise DataError(f"dataset 'tcga' needs param '{name.lower()}_dir'")
    indexes = {name: FileIndex(d) for name, d in dirs.items()}
    slides = []
    for i, row in enumerate(df.to_dict("records")):
        sid = _slide_id(row["slide_id"], p.train_csv, i)
        label = _TCGA.get(str(row["label"]).strip().lower())
        if label is None:
            raise DataError(f"{p.train_csv}, slide {sid!r}: unknown label value {row['label']!r} "
                            "(expected TCGA-LUAD, TCGA-LUSC, 0 or 1)")
        path = indexes[label].find(sid, "high")
        if path is None:
            raise DataError(f"slide {sid!r}: no feature file under {dirs[label]} ({label} folder)")
        split = _split_value(row.get("split", ""), p.train_csv, sid)
        slides.append(SlideEntry(sid, label, split, str(row.get("patient_id", "")).strip(), {"high": path}))
    return Cohort(slides, ["LUAD", "LUSC"], ("high",))


def _folder(p: Params) -> Cohort:
    roots = _scale_roots(p)
    if not p.labels_csv:
        raise DataError("dataset 'folder' needs param 'labels_csv' (columns slide_id,label[,split][,patient_id])")
    df = _read_csv(p.labels_csv, ["slide_id", "label"], "labels_csv", ("split", "patient_id"))
    slides = []
    for i, row in enumerate(df.to_dict("records")):
        sid = _slide_id(row["slide_id"], p.labels_csv, i)
        split = _split_value(row.get("split", ""), p.labels_csv, sid)
        if str(row["label"]).strip() == "":
            raise DataError(f"{p.labels_csv}, slide {sid!r}: empty label")
        slides.append(SlideEntry(sid, str(row["label"]).strip(), split, str(row.get("patient_id", "")).strip()))
    canonical = canonical_labels([s.label for s in slides])
    slides = [dataclasses.replace(s, label=lab) for s, lab in zip(slides, canonical)]
    names = sorted({s.label for s in slides})
    try:
        names = sorted(names, key=float)
    except ValueError:
        pass
    _attach_files(slides, roots)
    return Cohort(slides, names, tuple(roots))


def _split_value(value: str, path: str | Path, sid: str) -> str:
    split = str(value).strip().lower()
    if split not in ("", "train", "test"):
        raise DataError(f"{path}, slide {sid!r}: split must be train or test, got {split!r}")
    return split


def canonical_labels(labels: list[str]) -> list[str]:
    """Numeric labels as numbers: ``1``, ``1.0`` and `` 1`` are one class, ``1``. Text labels are
    kept as written (stripped); a text spelling that differs is another class, which the cohort
    check below then reports when it is too small to train on."""
    values = []
    for lab in labels:
        try:
            values.append(float(lab))
        except ValueError:
            return [lab.strip() for lab in labels]
    if not all(np.isfinite(v) for v in values):
        bad = next(lab for lab, v in zip(labels, values) if not np.isfinite(v))
        raise DataError(f"label {bad!r} is not a class")
    return [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values]


def check_classes(cohort: Cohort, dataset: str) -> None:
    """A cohort needs two classes or more, each with at least two slides (one cannot be both
    trained on and tested); a too-small class is usually a misspelt label."""
    by_class: dict[str, list[str]] = {}
    for s in cohort.slides:
        by_class.setdefault(s.label, []).append(s.slide_id)
    if len(by_class) < 2:
        raise DataError(f"dataset {dataset!r}: every slide has the label {next(iter(by_class))!r}; a classifier "
                        f"needs at least two classes (labels found: {sorted(by_class)})")
    for label, ids in sorted(by_class.items()):
        if len(ids) < 2:
            raise DataError(f"dataset {dataset!r}: class {label!r} has only {len(ids)} slide ({', '.join(ids)}); "
                            f"each class needs at least 2 (a misspelt label? classes: {sorted(by_class)})")


def load_cohort(p: Params, demo_dir: Path = DEMO_DIR) -> Cohort:
    """Resolve the ``dataset`` preset into a :class:`Cohort` (labels checked, files found)."""
    if p.dataset == "demo":
        cohort = _c16(_demo_params(p, demo_dir), str(demo_dir), str(demo_dir))
    elif p.dataset == "c16":
        cohort = _c16(p, p.root_dir_high, p.root_dir_low)
    elif p.dataset == "c17":
        cohort = _c17(p)
    elif p.dataset == "tcga":
        cohort = _tcga(p)
    else:
        cohort = _folder(p)
    seen: set[str] = set()
    for s in cohort.slides:
        if s.slide_id in seen:
            raise DataError(f"slide {s.slide_id!r}: listed twice (duplicate slide id)")
        seen.add(s.slide_id)
    if not cohort.slides:
        raise DataError(f"dataset {p.dataset!r}: no slides listed")
    check_classes(cohort, p.dataset)
    return cohort


def _demo_params(p: Params, demo_dir: Path) -> Params:
    return dataclasses.replace(p, train_list=str(demo_dir / "train_list.txt"),
                               test_csv=str(demo_dir / "test_labels.csv"))
