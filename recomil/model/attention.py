"""Gated attention pooling (Ilse et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from recomil.model.dropout import Dropout


class GatedAttention(nn.Module):
    """``a_j = w^T (tanh(V z_j) * sigmoid(U z_j))``, ``alpha = softmax(a)``, ``r = sum_j alpha_j z_j``."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), Dropout(drop))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), Dropout(drop))
        self.w = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool tokens.

        Args:
            z: ``[T, dim]`` tokens.

        Returns:
            ``(r, alpha)``: pooled ``[dim]`` and attention ``[T]`` (float32, sums to 1).
        """
        scores = self.w(self.v(z) * self.u(z)).squeeze(-1)
        alpha = torch.softmax(scores.float(), dim=0)
        r = alpha.to(z.dtype) @ z
        return r, alpha
