"""Which bags an epoch visits, in which order, grouped into optimiser steps; instance dropout.

- ``sampler: shuffle`` visits every training bag once per epoch in a random order (the original).
  ``balanced`` draws as many bags per epoch with replacement, each class equally likely (a class's
  bags uniformly within it), so a minority class is seen as often as the majority.
- ``bags_per_step`` B: the gradients of B consecutive bags are summed (each bag's loss divided by
  B) before one optimiser step; the last step of an epoch may hold fewer bags. B = 1 is one bag per
  step, the original.
- ``instance_dropout`` r: in training only, each patch of a bag is left out with probability r
  (at least one patch is kept); validation and test always see every patch.

The order of epoch ``e`` is drawn from ``(seed, fold, e[, member])`` alone, so a resumed run visits
the same bags as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_order(sampler: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of the training bags one epoch visits (``len(labels)`` of them), drawn with ``rng``."""
    n = len(labels)
    if sampler == "balanced" and n:
        classes = np.unique(labels)
        picked = rng.choice(classes, size=n)
        out = np.empty(n, dtype=np.int64)
        for c in classes:
            where = np.flatnonzero(picked == c)
            out[where] = rng.choice(np.flatnonzero(labels == c), size=len(where))
        return out
    return rng.permutation(n)


def step_groups(order: np.ndarray, bags_per_step: int) -> list[np.ndarray]:
    """``order`` cut into consecutive optimiser steps of ``bags_per_step`` bags (the last may be short)."""
    b = max(1, int(bags_per_step))
    return [order[i:i + b] for i in range(0, len(order), b)]


def drop_instances(bag: dict[str, torch.Tensor], rate: float) -> dict[str, torch.Tensor]:
    """``bag`` with each patch of each scale kept with probability ``1 - rate`` (torch's global RNG,
    saved with the resume state); at least one patch per scale stays. ``rate`` 0 returns ``bag``."""
    if rate <= 0:
        return bag
    out = {}
    for scale, x in bag.items():
        u = torch.rand(x.shape[0], device=x.device)
        keep = u >= rate
        if not bool(keep.any()):
            keep[u.argmax()] = True
        out[scale] = x[keep]
    return out
