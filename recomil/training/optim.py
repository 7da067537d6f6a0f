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


def instance_head_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every branch's instance head (empty without one)."""
    out: list[nn.Parameter] = []
    for module in model.modules():
        head = getattr(module, "instance_head", None)
        if isinstance(head, nn.Module):
            out.extend(head.parameters())
    return out


def build_optimizer(model: nn.Module, p: Params) -> torch.optim.Optimizer:
    """Adam or AdamW (``p.optimizer``), ``lr`` and ``weight_decay`` from ``p``.

    With ``inst_lr`` > 0 the instance heads form a second parameter group of base learning rate
    ``inst_lr`` (each group's ``base_lr``; the schedule multiplies both by the same factor), which
    :func:`clip_gradients` leaves out of the clipped norm. ``fused``: one kernel for all parameters
    (CPU and CUDA), the same update as the loop form."""
    cls = torch.optim.AdamW if p.optimizer == "adamw" else torch.optim.Adam
    inst = {id(q) for q in instance_head_params(model)} if p.inst_lr > 0 else set()
    groups = [{"params": [q for q in model.parameters() if id(q) not in inst], "base_lr": p.lr, "clip": True}]
    if inst:
        groups.append({"params": [q for q in model.parameters() if id(q) in inst], "base_lr": p.inst_lr,
                       "clip": False})
    for g in groups:
        g["lr"] = g["base_lr"]
    return cls(groups, lr=p.lr, weight_decay=p.weight_decay, fused=True)


def clip_gradients(model: nn.Module, max_norm: float, opt: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """Clip the gradient's total L2 norm to ``max_norm`` (> 0; 0 = no clipping) and return the norm
    it had before, a 0-d tensor on the parameters' device. With ``opt``, only the parameters of its
    groups marked ``clip`` count (the instance heads under ``inst_lr`` > 0 are neither clipped nor
    counted)."""
    if opt is not None:
        params = [q for g in opt.param_groups if g.get("clip", True) for q in g["params"] if q.grad is not None]
    else:
        params = [q for q in model.parameters() if q.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    with torch.no_grad():  # the norm clip_grad_norm_ would compute, without rescaling (any torch >= 2.1)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.grad.detach()) for q in params]))
