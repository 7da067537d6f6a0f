"""recomil: ReCo-MIL whole-slide-image classifiers as a DVC pipeline."""

from recomil.config import Params, load_params, make_params
from recomil.model import build_model

__version__ = "0.1.0"
__all__ = ["Params", "__version__", "build_model", "load_params", "make_params"]
