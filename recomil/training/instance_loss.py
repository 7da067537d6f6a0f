"""The instance-level auxiliary loss (``lambda_inst`` > 0): a patch classifier trained under the
standard multiple-instance assumption, for binary cohorts whose positive class (label index 1, e.g.
``tumor``) is the presence of some positive patches and whose negative slides hold none.

Per bag and scale, on the branch's ``instance_logits`` ``s`` ``[N]``:

- a negative slide (label 0): every patch is negative, ``mean_i BCE(s_i, 0)``;
- a positive slide (label 1): its ``k = max(1, floor(N * inst_top_p))`` highest-scoring patches are
  positive, ``mean_{i in top-k} BCE(s_i, 1)``.

Every patch of every negative slide constrains the patch classifier (tens of thousands of examples
where the slide labels give tens), and the positive slides only ask that some patches score high:
a mi-SVM-style self-training that finds a small tumour's direction in the features where the bag
loss alone, on a few dozen slides, memorises. Not for subtyping (LUAD against LUSC: both classes
hold tumour): keep ``lambda_inst: 0`` there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def instance_loss(logits: torch.Tensor, positive: bool, top_p: float) -> torch.Tensor:
    """The loss of one bag's patch logits ``[N]`` (float32 scalar)."""
    logits = logits.float()
    if not positive:
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    k = min(logits.shape[0], max(1, math.floor(logits.shape[0] * top_p)))
    top = logits.topk(k).values
    return F.binary_cross_entropy_with_logits(top, torch.ones_like(top))


def instance_losses(logits: torch.Tensor, positive: torch.Tensor, top_p: float,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of each of B padded bags at once: ``logits`` ``[B, N]``, ``positive`` ``[B]`` bool,
    ``mask`` ``[B, N]`` bool (True: a real patch; None: all real); returns ``[B]`` float32, bag b's
    value :func:`instance_loss` of its real patches (``k`` from its own N)."""
    logits = logits.float()
    if mask is None:
        mask = torch.ones_like(logits, dtype=torch.bool)
    n = mask.sum(-1)
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    neg = (neg * mask).sum(-1) / n
    k = (n.double() * top_p).floor().long().clamp(min=1).minimum(n)  # [B] each bag's own k
    top = logits.masked_fill(~mask, float("-inf")).sort(dim=-1, descending=True).values  # no host sync
    chosen = torch.arange(top.shape[1], device=top.device)[None, :] < k[:, None]
    pos = F.binary_cross_entropy_with_logits(top.masked_fill(~chosen, 0.0), torch.ones_like(top), reduction="none")
    pos = (pos * chosen).sum(-1) / k
    return torch.where(positive, pos, neg)
