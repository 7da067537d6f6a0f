"""Orthogonal regulariser that keeps prototypes diverse (METHOD.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def orthogonal_loss(protos: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine similarity of the prototypes.

    ``L = sum_{i != j} G_ij^2 / (K (K - 1))`` with ``G = P P^T`` for L2-normalised rows.

    Args:
        protos: ``[K, D]``.

    Returns:
        Scalar; 0 for orthonormal rows, and 0 when ``K < 2``.
    """
    k = protos.shape[0]
    if k < 2:
        return protos.sum() * 0.0
    p = F.normalize(protos.float(), dim=-1)
    g = p @ p.T
    off = g - torch.diag_embed(torch.diagonal(g))
    return off.pow(2).sum() / (k * (k - 1))
