"""Instance-to-prototype similarity (METHOD.md §1, step 2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def similarity(x: torch.Tensor, protos: torch.Tensor, method: str) -> torch.Tensor:
    """Similarity of every row of ``x`` to every prototype.

    Args:
        x: ``[N, D]`` instances.
        protos: ``[K, D]`` prototypes.
        method: ``l2`` (minus the Euclidean distance, not squared), ``cosine`` (dot product of
            L2-normalised rows) or ``dot`` (plain dot product).

    Returns:
        ``[N, K]`` similarities, larger means closer.
    """
    if method == "dot":
        return x @ protos.T
    if method == "cosine":
        return F.normalize(x, dim=-1) @ F.normalize(protos, dim=-1).T
    if method == "l2":
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c ; clamped so that sqrt has a finite gradient at 0.
        sq = (x * x).sum(-1, keepdim=True) + (protos * protos).sum(-1)[None, :] - 2.0 * (x @ protos.T)
        return -sq.clamp_min(_EPS).sqrt()
    raise ValueError(f"unknown similarity method {method!r}; expected l2, cosine or dot")


def best_similarity(x: torch.Tensor, protos: torch.Tensor, method: str, chunk: int = 65536) -> torch.Tensor:
    """``max_k sim(x_i, protos_k)`` for each instance, computed in row chunks.

    Args:
        x: ``[N, D]``; protos: ``[K, D]``.

    Returns:
        ``[N]`` best similarity of each instance (float32).
    """
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        out[sl] = similarity(x[sl].float(), protos.float(), method).amax(dim=1)
    return out


def nearest_prototype(x: torch.Tensor, protos: torch.Tensor, method: str, chunk: int = 65536) -> torch.Tensor:
    """Index of the most similar prototype for each row of ``x`` ``[N, D]``; returns ``[N]`` int64."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        out[sl] = similarity(x[sl].float(), protos.float(), method).argmax(dim=1)
    return out
