"""CPU threads shared fairly between the trainings running on one machine (``threads`` param).

``dvc queue start -j 2`` on a 2-core machine starts two trainings that would each take every
core; their OpenMP threads then spin against each other and both slow down many-fold. With
``threads: 0`` (default) a CPU training counts the recomil trainings registered in a folder of
the machine's temporary directory when it starts and takes ``cores // trainings`` threads (at
least 1), counting the cores this process may use (its CPU affinity: a SLURM job or ``taskset``
sees its own cores, not the whole machine's). A training registers as soon as its stage starts
(before it reads its bags), and at the start of every epoch it lowers its count when more
trainings have started since (two queued experiments rarely start in the same second: the first
would otherwise keep every core beside the second); it never raises it again, and says so when it
lowers it. The count is restored on resume, because floating-point reductions, and so the trained
weights, differ in their last bits between thread counts; it is printed and recorded in the
run's summary and per epoch in the training log. ``threads: N``
fixes the count; an ``OMP_NUM_THREADS`` set in the environment is respected as an upper bound.
GPU training is not affected.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

import torch

REGISTRY = Path(tempfile.gettempdir()) / "recomil-trainings"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a SLURM allocation, ``taskset``, a
    container's cpuset), which ``os.cpu_count()`` (every core of the machine) ignores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on macOS / Windows
        return os.cpu_count() or 1


def running_trainings(registry: Path = REGISTRY) -> int:
    """Live registered trainings on this machine (stale entries are removed)."""
    n = 0
    for entry in registry.glob("*.pid"):
        try:
            pid = int(entry.stem)
        except ValueError:
            continue
        if _alive(pid):
            n += 1
        else:
            entry.unlink(missing_ok=True)
    return n


def register(registry: Path = REGISTRY) -> Path:
    """Count this process as a running training until it exits (idempotent: one entry per process)."""
    registry.mkdir(parents=True, exist_ok=True)
    entry = registry / f"{os.getpid()}.pid"
    if not entry.exists():
        entry.touch()
        atexit.register(entry.unlink, missing_ok=True)
    return entry


class ThreadShare:
    """Registers this process as a training and sets its torch thread count (see module doc)."""

    def __init__(self, threads: int, registry: Path = REGISTRY) -> None:
        self.threads, self.registry = threads, registry
        self.entry: Path | None = None
        if threads == 0:
            self.entry = register(registry)

    def apply(self, fixed: int | None = None) -> int:
        """Set and return this training's thread count (``fixed``: a count to restore on resume)."""
        cores = usable_cores()
        cap = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or cores
        n = self.threads if self.threads > 0 else max(1, cores // max(1, running_trainings(self.registry)))
        n = max(1, min(fixed or n, cap))
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def lower(self, current: int) -> int | None:
        """The new, smaller count when more trainings share the cores than when ``current`` was set
        (and set it); None when ``current`` still fits or the count is fixed (``threads`` > 0)."""
        if self.threads > 0:
            return None
        n = max(1, usable_cores() // max(1, running_trainings(self.registry)))
        if n >= current:
            return None
        torch.set_num_threads(n)
        return n

    def close(self) -> None:
        if self.entry is not None:
            self.entry.unlink(missing_ok=True)
            self.entry = None
