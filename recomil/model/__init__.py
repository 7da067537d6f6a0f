"""ReCo-MIL model parts, organised by concept, and the ABMIL baseline."""

from recomil.model.factory import build_model
from recomil.model.mil import MILClassifier

__all__ = ["MILClassifier", "build_model"]
