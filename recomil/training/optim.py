"""The optimiser and the gradient-norm clipping of one optimiser step.

``optimizer: adam`` is the original's Adam with the weight decay coupled into the gradient (L2);
``adamw`` decouples it (Loshchilov and Hutter 2019): the weights shrink by ``lr * weight_decay`` per
step whatever the gradient's scale, so Adam's normalisation does not undo the decay.

``grad_clip`` > 0 rescales the gradient of each optimiser step (the sum over its
``bags_per_step`` bags) to that norm when it is larger; 0 turns clipping off. The norm before
clipping is returned either way, for the per-epoch diagnostics, without a host synchronisation.
"""

from __future__ import annotations

import torch
from torch import nn

from recomil.config import Params


def build_optimizer(model: nn.Module, p: Params) -> torch.optim.Optimizer:
    """Adam or AdamW (``p.optimizer``) over every parameter, ``lr`` and ``weight_decay`` from ``p``.

    ``fused``: one kernel for all parameters (CPU and CUDA), the same update as the loop form."""
    cls = torch.optim.AdamW if p.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the gradient's total L2 norm to ``max_norm`` (> 0; 0 = no clipping) and return the norm
    it had before, a 0-d tensor on the parameters' device."""
    params = [q for q in model.parameters() if q.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    with torch.no_grad():  # the norm clip_grad_norm_ would compute, without rescaling (any torch >= 2.1)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.grad.detach()) for q in params]))
