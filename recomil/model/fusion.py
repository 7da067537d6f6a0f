"""Fusion of the high- and low-magnification logits (METHOD.md §2)."""

from __future__ import annotations

import torch
from torch import nn


class DualFusion(nn.Module):
    """``logits = w * logits_high + (1 - w) * logits_low``.

    Modes: ``learned`` (``w = sigmoid(a)``, ``a`` a learnable scalar initialised to
    ``alpha_init``), ``confidence`` (``w = c_h / (c_h + c_l + 1e-8)`` with ``c`` the branch's max
    softmax probability) and ``fixed`` (``w = sigmoid(alpha_init)``, no gradient).
    """

    def __init__(self, mode: str, alpha_init: float) -> None:
        super().__init__()
        if mode not in ("learned", "confidence", "fixed"):
            raise ValueError(f"unknown fusion {mode!r}; expected learned, confidence or fixed")
        self.mode = mode
        a = torch.tensor(float(alpha_init))
        if mode == "learned":
            self.a = nn.Parameter(a)
        else:
            self.register_buffer("a", a)

    def forward(self, logits_high: torch.Tensor, logits_low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``[B, C]`` logits (B bags); returns ``(logits [B, C], w)`` with ``w`` a scalar tensor
        (``learned``, ``fixed``) or ``[B]`` (``confidence``: each bag's own)."""
        if self.mode == "confidence":
            c_h = torch.softmax(logits_high.float(), -1).amax(-1, keepdim=True)
            c_l = torch.softmax(logits_low.float(), -1).amax(-1, keepdim=True)
            w = c_h / (c_h + c_l + 1e-8)
            fused = w * logits_high.float() + (1.0 - w) * logits_low.float()
            return fused, w.squeeze(-1)
        w = torch.sigmoid(self.a.float())
        fused = w * logits_high.float() + (1.0 - w) * logits_low.float()
        return fused, w
