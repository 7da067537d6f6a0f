"""Data: readers for every feature format, dataset presets, the feature store, the demo cohort."""

from recomil.data.errors import DataError

__all__ = ["DataError"]
