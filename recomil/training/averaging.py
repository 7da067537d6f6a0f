"""Weight averaging: the exponential moving average of the weights (``ema_epochs``)."""

from __future__ import annotations

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from recomil.config import Params
from recomil.model.mil import MILClassifier


def ema_decay(ema_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay of the weight average whose time constant is ``ema_epochs`` epochs of
    ``steps_per_epoch`` optimiser steps: ``1 - 1 / (ema_epochs * steps_per_epoch)`` (0 when that is
    below one step: the average is then the current weights)."""
    return max(0.0, 1.0 - 1.0 / (ema_epochs * max(1, steps_per_epoch)))



def weight_average(model: MILClassifier, p: Params, steps_per_epoch: int) -> AveragedModel | None:
    """The exponential moving average of ``model``'s parameters (``ema_epochs`` > 0), else None.

    torch's :class:`~torch.optim.swa_utils.AveragedModel`: the first update copies the weights,
    each later one moves the average ``1 - decay`` of the way to them. Buffers (temperature,
    standardisation statistics, rare weights) are not averaged: :func:`sync_buffers` copies them.
    """
    if p.ema_epochs <= 0:
        return None
    decay = ema_decay(p.ema_epochs, steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)



def sync_buffers(average: AveragedModel, model: MILClassifier) -> MILClassifier:
    """Copy ``model``'s buffers into the averaged module and return that module."""
    for mine, theirs in zip(average.module.buffers(), model.buffers(), strict=True):
        mine.copy_(theirs)
    return average.module
