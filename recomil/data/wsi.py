"""Whole-slide images, read with OpenSlide (``openslide-python`` plus the ``openslide-bin`` wheel).

The two wheels are a core dependency: together about 3 MB, no system library and no compiler,
so a fresh ``pip install`` reads ``.svs``, ``.tif``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.svslide``,
``.bif`` and ``.vms`` files on any machine. Everything slide-related goes through this module.

Coordinates everywhere are level-0 pixels ``(x, y)`` of a patch's top-left corner (CLAM and
TRIDENT write them so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from recomil.data.discovery import walk_files
from recomil.data.errors import DataError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu",
                  ".qptiff")


class SlideIndex:
    """Slide files below ``root`` found by slide id (the file name without its ending)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: slides_dir is not a folder")
        self._files: dict[str, list[Path]] = {}
        for path in walk_files(self.root):
            if path.suffix.lower() in SLIDE_SUFFIXES and path.is_file():
                self._files.setdefault(path.stem, []).append(path)

    def find(self, slide_id: str) -> Path | None:
        """The slide file of ``slide_id``, None when there is none; two candidates are an error."""
        found = self._files.get(slide_id, [])
        if len(found) > 1:
            raise DataError(f"slide {slide_id!r}: two slide files under {self.root}: "
                            f"{', '.join(str(f) for f in found)}")
        return found[0] if found else None


@dataclass
class Slide:
    """An open whole-slide image."""

    path: Path
    handle: object  # openslide.OpenSlide

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` at level 0."""
        return tuple(self.handle.dimensions)  # type: ignore[attr-defined]

    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]:
        """``([h, w, 3] uint8, downsample)``: the slide at most ``max_px`` on its longer side, read
        from the pyramid level closest above that size (never the full-resolution image); the
        downsample is level-0 pixels per thumbnail pixel."""
        img = self.handle.get_thumbnail((max_px, max_px)).convert("RGB")  # type: ignore[attr-defined]
        return np.asarray(img), self.dimensions[0] / img.size[0]

    def read_patch(self, x: float, y: float, size_level0: float, out_px: int | None = None) -> np.ndarray:
        """``[s, s, 3]`` uint8: the square patch at level-0 ``(x, y)`` of side ``size_level0``, read at
        full resolution (level 0) and resized to ``out_px`` when given."""
        size = max(1, int(round(size_level0)))
        region = self.handle.read_region((int(round(x)), int(round(y))), 0, (size, size))  # type: ignore
        img = Image.alpha_composite(Image.new("RGBA", region.size, (255, 255, 255, 255)), region).convert("RGB")
        if out_px is not None and out_px != size:
            img = img.resize((out_px, out_px), Image.Resampling.LANCZOS)
        return np.asarray(img)

    def close(self) -> None:
        self.handle.close()  # type: ignore[attr-defined]


def open_slide(path: str | Path) -> Slide:
    """Open a whole-slide image; an unreadable file is a :class:`DataError` naming it."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: slide file not found")
    try:
        return Slide(path, openslide.OpenSlide(str(path)))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as exc:
        raise DataError(f"{path}: cannot read this whole-slide image ({exc})") from None
