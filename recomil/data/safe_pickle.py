"""A restricted unpickler for feature files: plain data only, never code.

The original stores features as pickles. ``pickle.load`` on an untrusted file can run arbitrary
code, so we admit only the globals that plain numpy arrays and scalars need; anything else
(``os.system``, ``builtins.eval``, ...) is refused before it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from recomil.data.errors import DataError

_ALLOWED: set[tuple[str, str]] = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load global {module}.{name} (only plain data is allowed)")


def load_plain_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only plain data (numpy arrays and scalars, containers, numbers).

    Raises:
        DataError: the file tries to load anything else, or is truncated or corrupt.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: unsafe or corrupt pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
