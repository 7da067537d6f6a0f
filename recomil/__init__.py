"""recomil: ReCo-MIL whole-slide-image classifiers as a DVC pipeline."""

from __future__ import annotations

import os
from typing import Any

#: oneDNN (torch's CPU bf16 matrix products) keeps a compiled primitive per matrix shape, up to
#: 1,024 of them by default; every bag size is a new shape, so a bf16 training on a cohort of
#: varied bags grew by ~8 MB per distinct size (1.4 GB against 0.6 GB in float32 after 50 sizes,
#: benchmarks/model_step.md). 16 cached shapes keep the memory flat at no measurable speed cost.
#: Read by oneDNN when it first runs, so it is set here, before any computation; a value set in
#: the environment is kept.
ONEDNN_CACHE_CAPACITY = "16"
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)

from recomil.config import Params, load_params, make_params  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Params", "__version__", "build_model", "load_params", "make_params"]


def __getattr__(name: str) -> Any:
    # torch is imported on first use of the model, so that light stages (check_params, scan)
    # start in a fraction of a second
    if name == "build_model":
        from recomil.model import build_model

        return build_model
    raise AttributeError(f"module 'recomil' has no attribute {name!r}")
