"""Rare instances (METHOD.md §3): the per-bag rarity gate and the rare-prototype weights."""

from __future__ import annotations

import math

import torch


def rarity_gate(best_sim: torch.Tensor, top_p: float, alpha: float) -> torch.Tensor:
    """Gate that boosts the bag's least typical instances.

    The ``m = max(1, floor(N * top_p))`` instances with the lowest best-prototype similarity
    (the m-th smallest value is the threshold, ties included) get ``1 + alpha``; all others 1.
    Note the ``max(1, ...)``: a bag of 2 instances always has one of them boosted.

    Args:
        best_sim: ``[N]`` best similarity of each instance to any prototype.
        top_p: fraction of instances to boost; ``<= 0`` turns the gate off.
        alpha: boost; ``<= 0`` turns the gate off.

    Returns:
        ``[N]`` gate values (all ones when off), same dtype as ``best_sim``.
    """
    n = best_sim.shape[0]
    gate = torch.ones_like(best_sim)
    if top_p <= 0 or alpha <= 0 or n == 0:
        return gate
    m = max(1, math.floor(n * top_p))
    m = min(m, n)
    threshold = torch.kthvalue(best_sim.detach().float(), m).values
    gate[best_sim <= threshold] = 1.0 + alpha
    return gate


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
