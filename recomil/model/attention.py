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

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool tokens.

        Args:
            z: ``[T, dim]`` tokens of one bag, or ``[B, T, dim]`` of B padded bags.
            mask: ``[B, T]`` bool, True for real tokens (None: all real); padding gets attention 0.

        Returns:
            ``(r, alpha)``: pooled ``[dim]`` (``[B, dim]``) and attention ``[T]`` (``[B, T]``; float32,
            each bag's sums to 1).
        """
        scores = self.w(self.v(z) * self.u(z)).squeeze(-1).float()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        if z.ndim == 2:
            return alpha.to(z.dtype) @ z, alpha
        return (alpha.to(z.dtype).unsqueeze(-2) @ z).squeeze(-2), alpha
