"""Data-parallel training across processes (``torchrun``), CPU (gloo) or GPU (nccl).

Each rank trains on its shard of the epoch's bags (one bag per step, as in single-process
training) and gradients are averaged across ranks after every backward pass, so every rank
applies the same update and the weights stay identical. The averaging is an explicit
all-reduce over every trainable parameter rather than the ``DistributedDataParallel`` wrapper
because ReCo-MIL switches ``requires_grad`` of its raw prototypes on after the freezing epochs;
DDP fixes its gradient buckets when it is built and would never synchronise them.

Shards are padded to equal length by wrapping around the epoch's order, so uneven bag counts
never leave one rank waiting in a collective; bag sizes may differ freely (a step is one bag).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes (1 when not launched by torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and logs."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(order: np.ndarray, r: int, world: int) -> np.ndarray:
    """This rank's part of an epoch order, padded by wrap-around so that every rank gets
    ``ceil(len(order) / world)`` items."""
    if world <= 1 or len(order) == 0:
        return order
    per = -(-len(order) // world)
    padded = np.resize(order, per * world)
    return padded[r::world]


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce and average the gradients of every trainable parameter (missing ones count as 0)."""
    world = world_size()
    if world <= 1:
        return
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= world


def sum_across(values: dict[str, float]) -> dict[str, float]:
    """Sum scalar values across ranks."""
    if world_size() <= 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def check_in_sync(model: torch.nn.Module) -> None:
    """Raise if the ranks' weights differ (used by the tests via ``RECOMIL_CHECK_SYNC=1``)."""
    if world_size() <= 1:
        return
    with torch.no_grad():
        digest = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in model.state_dict().values()
                     if p.is_floating_point())
    all_digests = gather_objects(digest)
    if any(d != all_digests[0] for d in all_digests):
        raise RuntimeError(f"ranks' weights differ after a step: {all_digests}")
