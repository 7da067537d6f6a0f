"""Find each slide's feature file in a folder tree, whatever the naming the original allows.

Accepted names (any supported ending, anywhere below the root):
``{slide_id}_{high|low}_feature_{encoder}.pkl`` (the original), ``{slide_id}.{ext}``,
``{slide_id}/features.{ext}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from recomil.data.errors import DataError
from recomil.data.readers import SUFFIXES

_SCALED = re.compile(r"^(?P<id>.+)_(?P<scale>high|low)_feature(?:_[A-Za-z0-9]+)?$")


def slide_key(path: Path) -> tuple[str, str | None]:
    """``(slide_id, scale or None)`` from a feature file's path."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    m = _SCALED.match(stem)
    if m:
        return m.group("id"), m.group("scale")
    if stem == "features":
        return path.parent.name, None
    return stem, None


def walk_files(root: Path, subdirs: tuple[str, ...] = ("",)) -> list[Path]:
    """Every file below ``root`` (or below its ``subdirs``), sorted, following symbolic links to
    folders (the usual way to gather slides from shared drives) and guarding against link loops."""
    found: list[Path] = []
    seen: set[str] = set()
    for sub in subdirs:
        start = root / sub
        if not start.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(start, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a loop, or a folder reached twice through links
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            found += [Path(dirpath) / f for f in sorted(filenames)]
    return found


class FileIndex:
    """All feature files below ``root``, keyed by slide id and scale.

    Args:
        subdirs: read only these folders below ``root`` (a preset's layout); default everything.
        names: a regular expression the file name must match (a preset's naming); default any.
    """

    def __init__(self, root: str | Path, subdirs: tuple[str, ...] = ("",), names: str | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: feature folder not found")
        self._files: dict[tuple[str, str | None], Path] = {}
        pattern = re.compile(names) if names else None
        for path in walk_files(self.root, subdirs):
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            if pattern is not None and not pattern.fullmatch(path.name):
                continue
            key = slide_key(path)
            if key in self._files:
                raise DataError(f"slide {key[0]!r}: two feature files, {self._files[key]} and {path}")
            self._files[key] = path

    def find(self, slide_id: str, scale: str, named_only: bool = False) -> Path | None:
        """The file of ``slide_id`` at ``scale`` (a scale-named file first), or None; with
        ``named_only`` only a file whose name says the scale (``{slide}_{scale}_...``)."""
        if named_only:
            return self._files.get((slide_id, scale))
        return self._files.get((slide_id, scale)) or self._files.get((slide_id, None))

    def slide_ids(self, scale: str, named_only: bool = False) -> list[str]:
        """Every slide id with a file usable at ``scale`` (``named_only``: named for that scale)."""
        ok = (scale,) if named_only else (scale, None)
        return sorted({sid for (sid, sc) in self._files if sc in ok})
