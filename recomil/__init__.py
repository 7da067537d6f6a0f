"""recomil: ReCo-MIL whole-slide-image classifiers as a DVC pipeline."""

from __future__ import annotations

from typing import Any

from recomil.config import Params, load_params, make_params

__version__ = "0.1.0"
__all__ = ["Params", "__version__", "build_model", "load_params", "make_params"]


def __getattr__(name: str) -> Any:
    # torch is imported on first use of the model, so that light stages (check_params, scan)
    # start in a fraction of a second
    if name == "build_model":
        from recomil.model import build_model

        return build_model
    raise AttributeError(f"module 'recomil' has no attribute {name!r}")
