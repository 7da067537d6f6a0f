"""Gated-attention ABMIL (Ilse et al. 2018): the field's standard baseline, as a branch."""

from __future__ import annotations

import torch
from torch import nn

from recomil.model.attention import GatedAttention
from recomil.model.dropout import Dropout


class ABMILBranch(nn.Module):
    """``h = ReLU(Linear(D, E) x)``; gated attention pooling; ``Linear(E, C)`` head.

    Same interface as :class:`recomil.model.branch.ReCoBranch`: no prototypes, no gate, a zero
    orthogonal term, so every pipeline stage runs it unchanged (``model: abmil``).
    """

    def __init__(self, feat_dim: int, embed_dim: int, num_classes: int, drop: float) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(feat_dim, embed_dim), nn.ReLU(), Dropout(drop))
        self.pool = GatedAttention(embed_dim, embed_dim // 2 or 1, drop)
        self.head = nn.Linear(embed_dim, num_classes)

    def set_temperature(self, tau: float) -> None:
        """No temperature in ABMIL."""

    def set_prototypes_frozen(self, frozen: bool) -> None:
        """No prototypes in ABMIL."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``x``: ``[N, D]`` -> ``logits`` ``[1, C]``, ``attention`` ``[N]``; or ``[B, N, D]`` padded
        bags with ``mask`` ``[B, N]`` bool -> ``[B, C]``, ``[B, N]`` (padding gets no attention)."""
        h = self.embed(x)
        r, alpha = self.pool(h, mask)
        logits = self.head(r)
        return {"logits": logits[None, :] if x.ndim == 2 else logits, "attention": alpha,
                "gate": torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)}

    def ortho_loss(self) -> torch.Tensor:
        """Zero (no prototypes)."""
        return self.head.weight.sum() * 0.0
