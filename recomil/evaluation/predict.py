"""Run a trained model over bags: probabilities and attention per slide."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from recomil.model.mil import MILClassifier


@torch.no_grad()
def predict_bags(model: MILClassifier, bags: Iterable[dict[str, torch.Tensor]],
                 amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Evaluate ``model`` (in eval mode) on each bag.

    Args:
        bags: iterable of ``{scale: [N_s, D_s] tensor}``.

    Returns:
        ``probs`` ``[S, C]`` float64 and, per bag, ``{"attention_<scale>": [N_s], "gate_<scale>": ...}``.
    """
    model.eval()
    probs, extras = [], []
    for bag in bags:
        device = next(model.parameters()).device
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(bag["high"], bag.get("low"))
        probs.append(torch.softmax(out["logits"].float(), -1)[0].cpu().numpy())
        extras.append({k: v.detach().float().cpu().numpy() for k, v in out.items()
                       if k.startswith(("attention_", "gate_", "assignment_"))})
    c = model_num_classes(model)
    return (np.stack(probs).astype(np.float64) if probs else np.zeros((0, c))), extras


def model_num_classes(model: MILClassifier) -> int:
    """Number of output classes of ``model``."""
    last = [m for m in model.branches["high"].modules() if isinstance(m, torch.nn.Linear)][-1]
    return last.out_features
