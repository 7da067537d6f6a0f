"""Prototype reducers that halve the prototype set after each enhancer stage (METHOD.md §1.2.5).

Both reducers map ``C [K, E] -> [K // 2, E]`` and carry the rare-prototype weights along
(``reduce_weights``), so that the weights keep the length of the prototype set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recomil.model.dropout import Dropout


class MLPReducer(nn.Module):
    """An MLP along the prototype axis: ``Linear(K, K), ReLU, Dropout, Linear(K, K//2), Dropout``."""

    def __init__(self, k_in: int, drop: float) -> None:
        super().__init__()
        self.k_in, self.k_out = k_in, k_in // 2
        self.net = nn.Sequential(
            nn.Linear(k_in, k_in), nn.ReLU(), Dropout(drop), nn.Linear(k_in, self.k_out), Dropout(drop)
        )

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """``c``: ``[K, E]`` -> ``[K // 2, E]``."""
        return self.net(c.T).T

    def reduce_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of ``w`` ``[K]`` to length ``K // 2``, sampled at the centres of the new
        cells (``align_corners=False``, as the original does; for K -> K/2 each new weight is the mean
        of two neighbours)."""
        return F.interpolate(w.float()[None, None], size=self.k_out, mode="linear", align_corners=False)[0, 0]


def graph_adjacency(c: torch.Tensor, thresh: float) -> torch.Tensor:
    """Symmetric-normalised prototype graph ``D^-1/2 (A + I) D^-1/2`` (no gradient).

    ``A`` is the cosine similarity of the rows of ``c`` clamped to ``[0, 1]``, with entries below
    ``thresh`` set to 0.

    Args:
        c: ``[K, E]``.

    Returns:
        ``[K, K]`` symmetric float32 matrix.
    """
    with torch.no_grad():
        cn = F.normalize(c.detach().float(), dim=-1)
        a = (cn @ cn.T).clamp(0.0, 1.0)
        a = torch.where(a < thresh, torch.zeros_like(a), a)
        a = a + torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
        d = a.sum(-1).rsqrt()
        return d[:, None] * a * d[None, :]


class GraphReducer(nn.Module):
    """Message passing on the prototype graph, then a bias-free ``Linear(K -> K//2)`` pooling."""

    def __init__(self, k_in: int, embed_dim: int, thresh: float, drop: float) -> None:
        super().__init__()
        self.k_in, self.k_out, self.thresh = k_in, k_in // 2, thresh
        self.message = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), Dropout(drop))
        self.pool = nn.Parameter(torch.empty(self.k_out, k_in))
        nn.init.kaiming_uniform_(self.pool, a=math.sqrt(5))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """``c``: ``[K, E]`` -> ``[K // 2, E]``."""
        adj = graph_adjacency(c, self.thresh).to(c.dtype)
        m = self.message(adj @ c)
        return self.pool.to(m.dtype) @ m

    def reduce_weights(self, w: torch.Tensor) -> torch.Tensor:
        """``w <- Q w`` with ``Q = ReLU(W_pool)`` row-normalised (no gradient)."""
        with torch.no_grad():
            q = F.relu(self.pool.detach().float())
            q = q / (q.sum(-1, keepdim=True) + 1e-6)
            return q @ w.float()
