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
