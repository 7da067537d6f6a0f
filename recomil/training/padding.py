"""Several bags in one forward pass (``bag_batching: padded``): padding to a common length with a
patch mask, and length buckets that keep the padding small.

With ``bags_per_step`` B > 1 each optimiser step's B bags are padded per scale to the step's longest
bag (``[B, N_max, D]`` and a ``[B, N_max]`` mask, True on real patches) and run through the model at
once; the model honours the mask everywhere (:meth:`recomil.model.mil.MILClassifier.forward`), so the
step's logits, attention and gradients are those of B one-bag passes (``bag_batching: accumulate``)
within float rounding. ``length_buckets`` W > 1 sorts each run of ``W * B`` consecutive bags of the
epoch's order by their high-scale length before cutting it into steps, then shuffles the steps, so a
step's bags have similar lengths (the padding share is logged per epoch as ``pad_share``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from recomil.training.batching import step_groups


def pad_bags(bags: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int, int]:
    """Pad ``bags`` (each ``{scale: [N_s, D_s]}``) per scale to ``[B, N_max, D_s]`` with zeros.

    Returns:
        ``(x, masks, real, slots)``: the padded features and ``[B, N_max]`` bool masks per scale, the
        number of real patches and of padded slots (``B * N_max``) over all scales.
    """
    x, masks, real, slots = {}, {}, 0, 0
    for scale in bags[0]:
        rows = [bag[scale] for bag in bags]
        if any(r.shape[0] == 0 for r in rows):
            raise ValueError(f"a bag without {scale} patches cannot be padded into a step")
        x[scale] = pad_sequence(rows, batch_first=True)
        # built on the features' device from their shapes: no host-to-device copy (a GPU would wait on it)
        masks[scale] = pad_sequence([torch.ones(r.shape[0], dtype=torch.bool, device=r.device) for r in rows],
                                    batch_first=True)
        real += int(sum(r.shape[0] for r in rows))
        slots += x[scale].shape[0] * x[scale].shape[1]
    return x, masks, real, slots


def bucket_steps(order: np.ndarray, lengths: np.ndarray, bags_per_step: int, window: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """``order`` cut into steps of ``bags_per_step`` bags of similar length.

    Each run of ``window * bags_per_step`` consecutive bags is sorted by ``lengths`` (indexed by bag)
    and cut into steps; the steps are then shuffled with ``rng``. Every bag of ``order`` stays in
    exactly one step; only the last run may leave a short step. ``window`` <= 1 or one bag per step:
    consecutive steps of ``order`` as they are (:func:`recomil.training.batching.step_groups`)."""
    b = max(1, int(bags_per_step))
    if b == 1 or window <= 1:
        return step_groups(order, b)
    steps: list[np.ndarray] = []
    for start in range(0, len(order), b * window):
        run = order[start:start + b * window]
        run = run[np.argsort(lengths[run], kind="stable")]
        steps.extend(run[i:i + b] for i in range(0, len(run), b))
    return [steps[i] for i in rng.permutation(len(steps))]
