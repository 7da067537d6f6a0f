"""The one error type for bad input data (and a full disk, named by the path being written)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent; the message names the file or slide."""


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` when writing under it runs out of space: a full disk becomes one
    :class:`DataError` ``<path>: no space left on the device``; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if is_out_of_space(exc):
            raise DataError(f"{path}: no space left on the device (errno {exc.errno}); free some space or "
                            f"point the output elsewhere, then run again") from None
        raise
