"""Per-epoch schedules of METHOD.md §4 (epochs counted from 1)."""

from __future__ import annotations

import math


def lr_factor(epoch: int, warmup_epochs: int, epochs: int) -> float:
    """Linear warm-up ``e / warmup`` for ``e <= warmup``, then half-cosine to 0 at ``epochs``.

    As in the original, the last epoch gets factor 0 (it trains nothing).
    """
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return epoch / warmup_epochs
    span = max(1, epochs - warmup_epochs)
    t = min(1.0, (epoch - warmup_epochs) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def temperature(epoch: int, tau_start: float, tau_end: float, tau_epochs: int) -> float:
    """``tau_start + (tau_end - tau_start) * min(1, e / tau_epochs)``."""
    frac = 1.0 if tau_epochs <= 0 else min(1.0, epoch / tau_epochs)
    return tau_start + (tau_end - tau_start) * frac
