"""The classifier users call: one branch per scale, fused when there are two (METHOD.md §2)."""

from __future__ import annotations

import torch
from torch import nn

from recomil.model.fusion import DualFusion


class InputNorm(nn.Module):
    """Per-dimension standardisation ``(x - mean) / std`` with fixed statistics (identity by default).

    The statistics come from the training slides of the fold (the prototypes stage computes them
    with ``standardize: true``) and travel with the checkpoint, so prediction applies the same.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the statistics (``[D]`` each; std is floored at 1e-6)."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, D]``."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class MILClassifier(nn.Module):
    """Single- or dual-scale MIL classifier.

    ``model(x_high, x_low=None)`` with ``[N_high, D_high]`` and ``[N_low, D_low]`` float tensors
    of one bag returns a dict with ``logits`` ``[1, C]`` and, per scale ``s``, ``attention_s``
    ``[N_s]``, ``gate_s`` ``[N_s]`` bool, ``logits_s`` ``[1, C]`` (and ``assignment_s`` for
    ReCo-MIL in eval mode), plus ``fusion_weight`` in dual mode. Single-scale mode is the high branch alone.
    """

    def __init__(self, branches: dict[str, nn.Module], fusion: DualFusion | None,
                 feat_dims: dict[str, int] | None = None) -> None:
        super().__init__()
        if "high" not in branches:
            raise ValueError("a high-scale branch is required")
        if len(branches) > 1 and fusion is None:
            raise ValueError("two scales need a fusion module")
        self.branches = nn.ModuleDict(branches)
        self.fusion = fusion
        self.input_norm = nn.ModuleDict({s: InputNorm(d) for s, d in (feat_dims or {}).items()})

    @property
    def scales(self) -> list[str]:
        """Scale names in forward order (``high`` first)."""
        return list(self.branches.keys())

    def forward(self, x_high: torch.Tensor, x_low: torch.Tensor | None = None, *,
                mask_high: torch.Tensor | None = None, mask_low: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Classify one bag (shapes in the class docstring), or B padded bags at once.

        For B bags pass ``[B, N_s, D_s]`` features per scale, each scale padded to its own length, with
        ``mask_s`` ``[B, N_s]`` bool (True: a real patch; None: every patch real). The outputs then have
        a leading ``B``: ``logits`` ``[B, C]``, ``attention_s`` ``[B, N_s]`` (0 on padding), and
        ``fusion_weight`` a scalar (``learned``, ``fixed``) or ``[B]`` (``confidence``)."""
        inputs = {"high": x_high, "low": x_low}
        masks = {"high": mask_high, "low": mask_low}
        if "low" in self.branches and x_low is None:
            raise ValueError("this model is dual-scale: pass the low-magnification features as x_low")
        if "low" not in self.branches and x_low is not None:
            raise ValueError("this model is single-scale: x_low must be None")
        batched = x_high.ndim == 3
        out: dict[str, torch.Tensor] = {}
        for name, branch in self.branches.items():
            x, mask = inputs[name], masks[name]
            _check_bag(name, x, mask, batched, x_high.shape[0])
            if name in self.input_norm:
                x = self.input_norm[name](x)
            res = branch(x, mask) if batched else branch(x)
            for key, value in res.items():
                out[f"{key}_{name}"] = value
        if self.fusion is None:
            out["logits"] = out["logits_high"].float()
        else:
            out["logits"], weight = self.fusion(out["logits_high"], out["logits_low"])
            out["fusion_weight"] = weight if batched else weight.reshape(())
        return out

    def ortho_losses(self) -> dict[str, torch.Tensor]:
        """The orthogonal term of each scale's prototypes."""
        return {name: branch.ortho_loss() for name, branch in self.branches.items()}

    def set_temperatures(self, taus: dict[str, float]) -> None:
        """Set τ per scale."""
        for name, tau in taus.items():
            self.branches[name].set_temperature(tau)

    def set_prototypes_frozen(self, frozen: bool) -> None:
        """Freeze or release the raw prototypes of every scale."""
        for branch in self.branches.values():
            branch.set_prototypes_frozen(frozen)


def _check_bag(name: str, x: torch.Tensor, mask: torch.Tensor | None, batched: bool, bags: int) -> None:
    """Refuse a scale's input that is not one non-empty ``[N, D]`` bag, or ``[B, N, D]`` padded bags
    (as many as the high scale's) whose ``[B, N]`` bool mask leaves every bag at least one patch."""
    if not batched:
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"x_{name} must be a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
        if mask is not None:
            raise ValueError(f"mask_{name} is for padded bags [B, N, D]; x_{name} is one bag {tuple(x.shape)}")
        return
    if x.ndim != 3 or x.shape[0] != bags or x.shape[1] == 0:
        raise ValueError(f"x_{name} must be [B, N, D] with B = {bags} (as x_high) and N > 0, got {tuple(x.shape)}")
    if mask is None:
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask_{name} must be a bool [B, N] tensor {tuple(x.shape[:2])}, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    if not mask.is_cuda and not bool(mask.any(-1).all()):  # on a GPU this would wait for the device every step
        raise ValueError(f"mask_{name} leaves a bag without any patch")
