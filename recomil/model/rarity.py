"""Rare instances (METHOD.md §3): the per-bag rarity gate and the rare-prototype weights."""

from __future__ import annotations

import math

import torch


def rarity_gate(best_sim: torch.Tensor, top_p: float, alpha: float,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gate that boosts each bag's least typical instances.

    The ``m = max(1, floor(N * top_p))`` instances with the lowest best-prototype similarity
    (the m-th smallest value is the threshold, ties included) get ``1 + alpha``; all others 1.
    Note the ``max(1, ...)``: a bag of 2 instances always has one of them boosted.

    Args:
        best_sim: ``[N]`` best similarity of each instance of one bag to any prototype, or ``[B, N]``
            for B padded bags.
        top_p: fraction of instances to boost; ``<= 0`` turns the gate off.
        alpha: boost; ``<= 0`` turns the gate off.
        mask: ``[B, N]`` bool, True for a bag's real instances (None: all real). ``N`` and ``m`` are
            each bag's own; padding is never boosted.

    Returns:
        gate values shaped like ``best_sim`` (all ones when off), same dtype.
    """
    gate = torch.ones_like(best_sim)
    if top_p <= 0 or alpha <= 0 or best_sim.shape[-1] == 0:
        return gate
    if best_sim.ndim == 1 and mask is None:
        n = best_sim.shape[0]
        m = max(1, math.floor(n * top_p))
        m = min(m, n)
        threshold = torch.kthvalue(best_sim.detach().float(), m).values
        return gate.masked_fill_(best_sim <= threshold, 1.0 + alpha)  # no boolean indexing: no GPU sync
    vals = best_sim.detach().float()
    if mask is None:
        mask = torch.ones_like(vals, dtype=torch.bool)
    n = mask.sum(-1, keepdim=True)  # [B, 1] each bag's own N
    m = (n.double() * top_p).floor().long().clamp(min=1).minimum(n)
    ordered = vals.masked_fill(~mask, float("inf")).sort(dim=-1).values
    threshold = ordered.gather(-1, (m - 1).clamp(min=0))  # the m-th smallest real value of each bag
    return torch.where((vals <= threshold) & mask, torch.full_like(gate, 1.0 + alpha), gate)


def rare_prototype_weights(counts: torch.Tensor | None, beta: float) -> torch.Tensor | None:
    """Weights that favour prototypes of rare clusters.

    ``w_k = (f_k + 1) ** (-beta)``, then ``w <- w / (mean(w) + 1e-6)``.

    Args:
        counts: ``[K]`` training instances nearest each k-means centre, or None.
        beta: exponent; ``<= 0`` turns the weights off.

    Returns:
        ``[K]`` float32 weights, or None when off.
    """
    if counts is None or beta <= 0:
        return None
    w = (counts.float() + 1.0).pow(-beta)
    return w / (w.mean() + 1e-6)
